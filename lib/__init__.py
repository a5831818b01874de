"""The shared library: SNCA loss, memories, kNN, schedules, training loop, checkpoints, run logging."""
from lib.chunked_snca_loss import chunked_snca_loss
from lib.knn import knn_predict
from lib.memory import KeyEncoder, Memory
from lib.snca_loss import snca_loss

__all__ = ["KeyEncoder", "Memory", "chunked_snca_loss", "knn_predict", "snca_loss"]
