"""Multispectral (N-band) input: which bands of each file a run reads, their per-band statistics on the
training split, and RGB composites of the chosen red, green and blue bands for figures and pages.

A run on N-band images records one ``band_stats`` record (``band_stats.json`` in the run folder and
``band_stats`` in every checkpoint): the bands read, the files' band count and data type, the red, green
and blue bands, and the per-band mean and standard deviation of the training split. Evaluation and
retrieval read and normalise images with it, so they see exactly what training saw.
"""
import argparse
from dataclasses import dataclass, replace

import numpy as np
import torch

from datasets.cache import decoded_batches
from datasets.folder import band_header

STRETCH = (2.0, 98.0)  # percentiles mapped to 0 and 255 in an RGB composite, per image and band
STATS_CHUNK = 256  # images per float64 pass of band_statistics


class BandError(ValueError):
    """A band selection that does not fit the files (the caller names the flag)."""


def parse_band_list(text):
    """``argparse`` type of ``--bands`` / ``--rgb-bands``: 'all' or distinct 1-based numbers, kept as text."""
    text = text.strip().lower()
    if text == "all":
        return text
    try:
        numbers = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'all' or comma-separated band numbers (1-based)") from None
    if min(numbers) < 1 or len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"{text!r}: band numbers are 1-based and distinct")
    return ",".join(map(str, numbers))


def parse_rgb_bands(text):
    """``argparse`` type of ``--rgb-bands``: three distinct 1-based band numbers."""
    text = parse_band_list(text)
    if text == "all" or len(text.split(",")) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give three band numbers, red, green, blue (e.g. 4,3,2)")
    return text


@dataclass(frozen=True)
class BandInput:
    """The N-band input of a run. ``bands``: 0-based indices of the bands read from each file, in order;
    ``count`` and ``dtype``: what every file holds; ``rgb``: the positions in ``bands`` of red, green and blue
    (None: no such bands); ``mean``, ``std``: per read band, of the training split (None until computed)."""
    bands: tuple
    count: int
    dtype: str
    rgb: tuple = None
    mean: tuple = None
    std: tuple = None

    @property
    def channels(self):
        return len(self.bands)

    @property
    def stored_dtype(self):
        """The dtype decoded images are kept at: the files' own (float64 as float32)."""
        return "float32" if self.dtype == "float64" else self.dtype

    @property
    def torch_dtype(self):
        return torch.from_numpy(np.empty(0, self.stored_dtype)).dtype

    @property
    def bytes_per_image_pixel(self):
        return self.channels * np.dtype(self.stored_dtype).itemsize

    def to_json(self):
        """The ``band_stats`` record, band numbers 1-based as on the command line."""
        return {"bands": [b + 1 for b in self.bands], "count": self.count, "dtype": self.dtype,
                "rgb_bands": None if self.rgb is None else [self.bands[p] + 1 for p in self.rgb],
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    @classmethod
    def from_json(cls, record):
        bands = tuple(b - 1 for b in record["bands"])
        rgb = None if record["rgb_bands"] is None else tuple(bands.index(b - 1) for b in record["rgb_bands"])
        return cls(bands, record["count"], record["dtype"], rgb,
                   None if record["mean"] is None else tuple(record["mean"]),
                   None if record["std"] is None else tuple(record["std"]))

    def with_stats(self, mean, std):
        return replace(self, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def band_input(bands, rgb_bands, count, dtype):
    """The ``BandInput`` of ``--bands`` and ``--rgb-bands`` (texts from ``parse_band_list``) for files of
    ``count`` bands of ``dtype``; without ``rgb_bands`` there are no red, green, blue bands."""
    numbers = list(range(1, count + 1)) if bands == "all" else [int(b) for b in bands.split(",")]
    if max(numbers) > count:
        raise BandError(f"--bands {bands}: the files have {count} bands")
    rgb = None
    if rgb_bands:
        missing = [b for b in map(int, rgb_bands.split(",")) if b not in numbers]
        if missing:
            raise BandError(f"--rgb-bands {rgb_bands}: band {missing[0]} is not among the bands read (--bands {bands})")
        rgb = tuple(numbers.index(int(b)) for b in rgb_bands.split(","))
    return BandInput(tuple(b - 1 for b in numbers), count, np.dtype(dtype).name, rgb)


def run_band_input(args, layout, first_path, saved=None):
    """The ``BandInput`` of a training run's ``--bands`` (None: 8-bit RGB images). ``layout``: the start-up
    check's '<count> x <dtype>' of the files (None: read from the first training file's header); ``saved``: a
    resumed run's ``band_stats``, whose bands this run's must equal."""
    if not args.bands:
        if args.rot90:
            raise BandError("--rot90 is an N-band augmentation: give --bands (RGB images keep the reference's ops)")
        return None
    if not args.imgEXT.lower().lstrip(".").startswith("tif"):
        raise BandError(f"--bands reads multi-band TIFFs: --imgEXT {args.imgEXT} is not tif or tiff")
    count, dtype = layout.split(" x ") if layout else band_header(first_path)[:2]
    bands = band_input(args.bands, args.rgb_bands, int(count), dtype)
    if saved is not None:
        was, now = saved, bands.to_json()
        for key in ("bands", "count", "dtype", "rgb_bands"):
            if was[key] != now[key]:
                raise BandError(f"--resume: the checkpoint's images have {key}={was[key]}, this run's {key}={now[key]}")
    return bands


def training_statistics(bands, samples, size, num_workers=0, images=None, saved=None):
    """``bands`` with the per-band mean and std of the training split ``samples``: of its decoded ``images``
    (N, C, S, S) when they are kept, else decoded once more here; a resumed run's are its checkpoint's ``saved``."""
    if saved is not None:
        return bands.with_stats(saved["mean"], saved["std"])
    chunks = images.split(STATS_CHUNK) if images is not None else (
        batch for batch, _ in decoded_batches(samples, size, num_workers, bands))
    return bands.with_stats(*band_statistics(chunks))


def band_statistics(chunks):
    """Per-band mean and (population) standard deviation, float64 numpy (C,) each, of image chunks (b, C, H, W).

    Each chunk's mean and sum of squared deviations are combined exactly as Chan, Golub and LeVeque's
    pairwise update (no E[x^2] - E[x]^2 cancellation), so the result is numpy's ``mean`` and ``std`` over
    all images and pixels to float64 rounding.
    """
    n, mean, m2 = 0, None, None
    for chunk in chunks:
        x = chunk.double().transpose(0, 1).reshape(chunk.shape[1], -1)                  # (C, b*H*W)
        k = x.shape[1]
        if k == 0:
            continue
        chunk_mean = x.mean(dim=1)                                                       # (C,)
        chunk_m2 = ((x - chunk_mean[:, None]) ** 2).sum(dim=1)                           # (C,)
        if mean is None:
            n, mean, m2 = k, chunk_mean, chunk_m2
            continue
        delta = chunk_mean - mean                                                        # (C,)
        mean = mean + delta * (k / (n + k))
        m2 = m2 + chunk_m2 + delta**2 * (n * k / (n + k))
        n += k
    if mean is None:
        raise BandError("no training image to compute the per-band statistics from")
    return mean.cpu().numpy(), (m2 / n).sqrt().cpu().numpy()


def safe_std(std):
    """A band that is constant over the training split has std 0: it is centred, not scaled (1)."""
    return tuple(s if s > 0 else 1.0 for s in std)


def rgb_composite(images, rgb, stretch=STRETCH):
    """uint8 (n, 3, H, W) of N-band images (n, C, H, W) of any dtype: the ``rgb`` band positions (None: the
    first band as grey), each stretched linearly from its ``stretch`` percentiles in each image to 0..255."""
    picked = images[:, list(rgb) if rgb is not None else [0, 0, 0]].double()            # (n, 3, H, W)
    flat = picked.flatten(2)                                                             # (n, 3, H*W)
    q = torch.tensor([stretch[0] / 100, stretch[1] / 100], dtype=torch.float64, device=images.device)
    low, high = flat.quantile(q, dim=2)                                                   # (n, 3) each
    scaled = (picked - low[..., None, None]) / (high - low).clamp_min(1e-12)[..., None, None]
    return (scaled.clamp(0, 1) * 255).round().to(torch.uint8)
