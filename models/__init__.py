"""The embedding network: ResNet trunk, FC1 embedding, FC2 class prototypes.

``EmbeddingNet`` and ``trunk_weights`` load on first use (PEP 562), so that ``ARCHS`` is read without importing torch.
"""
import importlib

ARCHS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}  # trunk: its torchvision weights enum
__all__ = ["ARCHS", "EmbeddingNet", "trunk_weights"]


def __getattr__(name):
    if name not in ("EmbeddingNet", "trunk_weights"):
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module("models.embedding_net"), name)
