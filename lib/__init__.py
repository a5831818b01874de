"""The shared library: SNCA loss, memories, kNN, schedules, training loop, checkpoints, run logging.

The names below load on first use (PEP 562), so that ``lib.args`` answers ``--help`` without importing torch.
``Memory`` is the memory bank (MB), ``lib.memory_bank.MemoryBank``, under its earlier name.
"""
import importlib
import sys
import types

_WHERE = {"chunked_snca_loss": "lib.chunked_snca_loss", "knn_predict": "lib.knn", "KeyEncoder": "lib.momentum_update",
          "Memory": "lib.memory_bank", "MemoryBank": "lib.memory_bank", "snca_loss": "lib.snca_loss"}
_NAMED = {"Memory": "MemoryBank"}  # an earlier name: the attribute it stands for
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), _NAMED.get(name, name))


class _Package(types.ModuleType):
    """``lib.snca_loss`` stays the function when its module of the same name is imported (which would bind the
    module to the package's attribute)."""

    def __setattr__(self, name, value):
        if not (name in _WHERE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
