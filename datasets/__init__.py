"""Where images come from: folder datasets, the reference split, decoded-image caches, batches,
batched augmentation, and the embedded synthetic dataset.

The names below load on first use (PEP 562), so that ``datasets.presets`` is read without importing torch.
"""
import importlib

_WHERE = {"DecodingBatches": "datasets.batches", "TensorBatches": "datasets.batches",
          "decoded_images": "datasets.cache", "SPLIT_NAMES": "datasets.folder", "SceneDataset": "datasets.folder",
          "build_splits": "datasets.folder", "decode_resized": "datasets.folder", "load_rgb": "datasets.folder",
          "make_synthetic": "datasets.synthetic"}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
