"""Folder-based RS scene datasets and the reference split (docs/method.md section 3).

Layout: ``<data>/<dataset>/<class>/<image>.<ext>``; classes are the sorted sub-folder names and a
label is the class index.
"""
import os
import random

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from lib.errors import InputError

SPLIT_NAMES = ("train", "val", "test")


def list_class_files(root, ext):
    """Sorted class names and, per class, the sorted file names whose extension is ``ext``.

    The extension match is case-insensitive (``.TIF`` counts as ``tif``); the reference globbed
    ``*.<ext>``, which is case-sensitive on Linux.
    """
    if not os.path.isdir(root):
        raise InputError(f"dataset folder {root} does not exist (check --data and --dataset)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(f"dataset folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    suffix = "." + ext.lstrip(".").lower()
    files = {c: sorted(f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(suffix)) for c in classes}
    if not any(files.values()):
        raise InputError(f"no '*{suffix}' files under {root}/<class>/ (check --imgEXT)")
    return classes, files


def split_class(files, seed=42, ratios=(0.7, 0.1, 0.2)):
    """Train / val / test lists of one class, exactly as the reference draws them.

    The seed is reset for every class. The val/test boundary is ``int(0.8 * n)`` as the reference
    writes it: ``0.7 + 0.1`` is ``0.7999999999999999`` in floating point, so the sum is rounded first.
    """
    files = list(files)
    random.seed(seed)
    random.shuffle(files)
    n = len(files)
    a = int(ratios[0] * n)
    b = int(round(ratios[0] + ratios[1], 12) * n)
    return files[:a], files[a:b], files[b:]


def build_splits(root, ext="tif", seed=42, ratios=(0.7, 0.1, 0.2), exclude=()):
    """The reference split of ``root`` = ``<data>/<dataset>``.

    Returns ``{"classes": [...], "train": [(path, label), ...], "val": [...], "test": [...]}``,
    class by class, in the reference's shuffled order within a class. Opens no image. Paths in
    ``exclude`` (bad files) are left out before the split: the rest gets the reference split of itself.
    """
    classes, files = list_class_files(root, ext)
    exclude = set(exclude)
    splits = {"classes": classes, **{name: [] for name in SPLIT_NAMES}}
    for label, name in enumerate(classes):
        kept = [f for f in files[name] if os.path.join(root, name, f) not in exclude]
        for split, part in zip(SPLIT_NAMES, split_class(kept, seed, ratios)):
            splits[split] += [(os.path.join(root, name, f), label) for f in part]
    return splits


SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's 16-bit (and 32-bit integer) grey modes
SIXTEEN_BIT_MAX = 65535


def to_rgb(image):
    """RGB of any Pillow mode. 16-bit grey is scaled to 8 bits (x * 255 / 65535), not clipped at 255 as
    Pillow's own ``convert`` does; palette images with transparency and ``La`` go through RGBA (alpha
    dropped); everything else is Pillow's conversion (grey replicated, alpha dropped, CMYK without a profile).
    """
    if image.mode in SIXTEEN_BIT:
        grey = np.asarray(image).astype(np.float64)                                  # (H, W)
        grey = np.rint(np.clip(grey, 0, SIXTEEN_BIT_MAX) * (255 / SIXTEEN_BIT_MAX)).astype(np.uint8)
        image = Image.fromarray(grey, "L")
    elif image.mode == "La" or (image.mode in ("P", "PA") and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path):
    """Decode one image as RGB (``to_rgb``), naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise InputError(f"cannot read image {path}: {error} (scripts/check_dataset.py lists every bad file; "
                         "--skip-bad-images --check-images full leaves them out)") from None


def decode_resized(path, size):
    """The reference's first transform, ``Resize((size, size))`` on the decoded image, as uint8 (3, S, S).

    Everything after it (augmentation, normalisation) runs on whole batches on the training device
    (``datasets.augment``), so that decoded images can be kept and reused across epochs.
    """
    return TF.pil_to_tensor(TF.resize(load_rgb(path), [size, size]))


class SceneDataset(torch.utils.data.Dataset):
    """``(uint8 image (3, S, S), label, index)`` over ``(path, label)`` pairs; ``targets`` needs no I/O."""

    def __init__(self, samples, size):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.size = size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return decode_resized(path, self.size), label, index
