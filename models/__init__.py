"""The embedding network: ResNet trunk, FC1 embedding, FC2 class prototypes."""
from models.embedding_net import ARCHS, EmbeddingNet, trunk_weights

__all__ = ["ARCHS", "EmbeddingNet", "trunk_weights"]
