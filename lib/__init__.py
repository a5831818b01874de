"""The shared library: SNCA loss, memories, kNN, schedules, training loop, checkpoints, run logging."""
from lib.knn import knn_predict
from lib.memory import KeyEncoder, Memory
from lib.snca_loss import snca_loss

__all__ = ["KeyEncoder", "Memory", "knn_predict", "snca_loss"]
