"""Where images come from: folder datasets, the reference split, transforms, the synthetic set."""
from datasets.folder import SPLIT_NAMES, SceneDataset, build_splits, load_rgb
from datasets.synthetic import make_synthetic
from datasets.transforms import eval_transform, train_transform

__all__ = [
    "SPLIT_NAMES", "SceneDataset", "build_splits", "eval_transform", "load_rgb", "make_synthetic", "train_transform",
]
