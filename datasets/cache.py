"""Decode once: every image of a split decoded and resized a single time, kept as uint8 (N, 3, S, S).

The reference decodes and resizes every image in every epoch; since its first transform is a fixed
``Resize((S, S))``, the result is the same each time and can be kept (AID at 256 px is ~2 GB, NWPU
~6 GB). With ``cache_dir`` the array is also stored on disk, under a key made of the file list,
the file sizes and modification times and S, so a changed dataset is decoded again.
"""
import hashlib
import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.folder import SceneDataset

DECODE_BATCH = 64


def cache_key(samples, size):
    """A digest of what the decoded array depends on: paths, labels, file sizes and times, and S."""
    stamps = [(p, label, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p, label in samples]
    return hashlib.sha256(json.dumps([size, stamps]).encode()).hexdigest()[:16]


def decode_all(samples, size, num_workers=0):
    """uint8 (N, 3, S, S): the split decoded and resized, in parallel over ``num_workers`` processes."""
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)                   # (N, 3, S, S)
    # The loader's own generator keeps it from drawing on the global RNG (model initialisation comes later).
    loader = DataLoader(SceneDataset(samples, size), batch_size=DECODE_BATCH, num_workers=num_workers,
                        generator=torch.Generator())
    for batch, _, indices in loader:
        images[indices] = batch
    return images


def decoded_images(samples, size, num_workers=0, cache_dir=None):
    """``decode_all``, read from / written to ``cache_dir`` when given (written atomically)."""
    if not cache_dir:
        return decode_all(samples, size, num_workers)
    path = os.path.join(cache_dir, f"decoded-{size}px-{cache_key(samples, size)}.npy")
    if os.path.exists(path):
        return torch.from_numpy(np.load(path))
    images = decode_all(samples, size, num_workers)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, images.numpy())
    os.replace(tmp, path)
    return images
