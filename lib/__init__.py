"""The shared library, by layer: ``losses/`` (the SNCA loss, the baselines' losses, the method registry),
``memories/`` (MB, MU and the others, and their registry), ``eval/`` (kNN, retrieval metrics, inference),
``training/`` (the loop, the program, checkpoints, run folders), ``cli/`` (flags) and ``distributed/`` (torchrun).

The public functions below load on first use (PEP 562), so that ``lib.cli`` answers ``--help`` without torch.
"""
import importlib

_WHERE = {"snca_loss": "lib.losses.snca", "chunked_snca_loss": "lib.losses.snca", "knn_predict": "lib.eval.knn"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
