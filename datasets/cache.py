"""Decode once: every image of a split decoded and resized a single time, kept as uint8 (N, 3, S, S), or for
N-band images (``--bands``) as (N, C, S, S) at the files' own dtype: uint16 stays uint16 (EuroSAT MS, 27,000 x
13 x 64 x 64 x 2 bytes = 2.88 GB; its training split 2.01 GB).

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


def cache_key(samples, size, bands=None):
    """A digest of what the decoded array depends on: paths, labels, file sizes and times, S (and the bands)."""
    stamps = [(p, label, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p, label in samples]
    key = [size, stamps] if bands is None else [size, stamps, list(bands.bands), bands.count, bands.dtype]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def decoded_batches(samples, size, num_workers=0, bands=None):
    """``(images (b, C, S, S), indices (b,))`` of the split in order, decoded by ``num_workers`` processes."""
    # The loader's own generator keeps it from drawing on the global RNG (model initialisation comes later).
    loader = DataLoader(SceneDataset(samples, size, bands), batch_size=DECODE_BATCH, num_workers=num_workers,
                        generator=torch.Generator())
    for batch, _, indices in loader:
        yield batch, indices


def decode_all(samples, size, num_workers=0, bands=None):
    """(N, C, S, S): the split decoded and resized, in parallel over ``num_workers`` processes; uint8 RGB, or
    the chosen bands at the files' dtype."""
    channels, dtype = (3, np.uint8) if bands is None else (bands.channels, bands.stored_dtype)
    images = np.empty((len(samples), channels, size, size), dtype=dtype)  # numpy: torch cannot index-write uint16
    for batch, indices in decoded_batches(samples, size, num_workers, bands):
        images[indices.numpy()] = batch.numpy()
    return torch.from_numpy(images)                                                          # (N, C, S, S)


def decoded_images(samples, size, num_workers=0, cache_dir=None, bands=None):
    """``decode_all``, read from / written to ``cache_dir`` when given (written atomically)."""
    if not cache_dir:
        return decode_all(samples, size, num_workers, bands)
    path = os.path.join(cache_dir, f"decoded-{size}px-{cache_key(samples, size, bands)}.npy")
    if os.path.exists(path):
        return torch.from_numpy(np.load(path))
    images = decode_all(samples, size, num_workers, bands)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, images.numpy())
    os.replace(tmp, path)
    return images
