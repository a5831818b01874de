"""Where images come from: folder datasets, the reference split, decoded-image caches, batches,
batched augmentation, and the embedded synthetic dataset."""
from datasets.batches import DecodingBatches, TensorBatches
from datasets.cache import decoded_images
from datasets.folder import SPLIT_NAMES, SceneDataset, build_splits, decode_resized, load_rgb
from datasets.synthetic import make_synthetic

__all__ = [
    "SPLIT_NAMES", "DecodingBatches", "SceneDataset", "TensorBatches", "build_splits", "decode_resized",
    "decoded_images", "load_rgb", "make_synthetic",
]
