"""The shared library: SNCA loss, memories, kNN, schedules, training loop, checkpoints, run logging.

``Memory`` is the memory bank (MB), ``lib.memory_bank.MemoryBank``, under its earlier name.
"""
from lib.chunked_snca_loss import chunked_snca_loss
from lib.knn import knn_predict
from lib.memory_bank import MemoryBank
from lib.memory_bank import MemoryBank as Memory
from lib.momentum_update import KeyEncoder
from lib.snca_loss import snca_loss

__all__ = ["KeyEncoder", "Memory", "MemoryBank", "chunked_snca_loss", "knn_predict", "snca_loss"]
