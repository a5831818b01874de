"""Folder-based RS scene datasets, the reference split (docs/method.md section 3) and the authors' unseen-class
split (docs/evaluation.md).

Layout: ``<data>/<dataset>/<class>/<image>.<ext>``; classes are the sorted sub-folder names and a
label is the class index.
"""
import logging
import os
import random
import warnings

import numpy as np
import tifffile
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from errors import InputError

SPLIT_NAMES = ("train", "val", "test")
# tifffile logs what it finds wrong in a damaged file (``invalid offset to first page``); the project says it once,
# as the file's error or check_dataset.py's report
logging.getLogger("tifffile").setLevel(logging.ERROR)


def quiet_pillow():
    """Pillow's warnings on a damaged file (a truncated TIFF's ``Corrupt EXIF data``) are left out: the file's
    problem reaches the user as the project's one line (the error naming the file, check_dataset.py's report).
    Called before each decode, since a warnings context (pytest's, a caller's) may have reset the filters."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


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


def build_unseen_split(root, ext="tif", seed=42, seen_fraction=0.8, train_fraction=0.8, exclude=()):
    """The authors' class-disjoint split (``DataGenClsSplit`` in their ``utils/dataGen.py``) of ``root``.

    ``random.seed(seed)`` once; the seen classes are ``random.sample(sorted classes, int(seen_fraction * C))``,
    labelled 0 .. S-1 by their position in that draw; then, continuing the same random stream, each seen
    class's sorted file list (in draw order) is shuffled and cut at ``int(train_fraction * n)`` into train and
    val. Every image of the other (unseen) classes is a test image. The authors order and label the unseen
    classes through a Python ``set``, which changes from run to run: here they follow in sorted order, labelled
    S .. C-1 (one label space, so that ``classes`` names every label), their files sorted. The fraction
    multiplies n as given, never a sum of ratios, so 0.8 is the authors' literal: ``int(0.8 * n) == 4n // 5``.

    Returns ``{"classes": seen in draw order + unseen sorted, "num_seen": S, "train", "val", "test"}``.
    Opens no image; paths in ``exclude`` are left out before the split.
    """
    classes, files = list_class_files(root, ext)
    for flag, fraction in (("--seen-fraction", seen_fraction), ("--train-fraction", train_fraction)):
        if not 0 < fraction < 1:
            raise InputError(f"{flag} {fraction}: must lie strictly between 0 and 1")
    num_seen = int(seen_fraction * len(classes))
    if num_seen < 2 or num_seen == len(classes):
        short = "fewer than 2 seen classes" if num_seen < 2 else "no unseen class"
        raise InputError(f"--split unseen: {root} has {len(classes)} classes; int({seen_fraction} x {len(classes)}) = "
                         f"{num_seen} seen classes leaves {short} (it needs at least 3 classes)")
    exclude = set(exclude)
    kept = {c: [f for f in files[c] if os.path.join(root, c, f) not in exclude] for c in classes}
    random.seed(seed)
    seen = random.sample(classes, num_seen)
    unseen = sorted(set(classes) - set(seen))
    splits = {"classes": seen + unseen, "num_seen": num_seen, **{name: [] for name in SPLIT_NAMES}}
    for label, name in enumerate(seen):
        shuffled = list(kept[name])
        random.shuffle(shuffled)
        cut = int(train_fraction * len(shuffled))
        splits["train"] += [(os.path.join(root, name, f), label) for f in shuffled[:cut]]
        splits["val"] += [(os.path.join(root, name, f), label) for f in shuffled[cut:]]
    for label, name in enumerate(unseen, start=num_seen):
        splits["test"] += [(os.path.join(root, name, f), label) for f in kept[name]]
    return splits


def build_split(root, ext, seed, kind="reference", fractions=(0.8, 0.8), exclude=()):
    """The split a run trains on (``--split``): ``build_splits``, or for 'unseen' ``build_unseen_split`` with
    ``fractions`` = (seen classes, training images of a seen class)."""
    if kind == "unseen":
        return build_unseen_split(root, ext, seed, *fractions, exclude=exclude)
    return build_splits(root, ext, seed, exclude=exclude)


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
    quiet_pillow()
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


# N-band files (``--bands``): read with tifffile, kept at their own dtype; float64 is kept as float32.
BAND_DTYPES = ("uint8", "uint16", "int16", "int32", "float32", "float64")
TIFF_ERRORS = (OSError, ValueError, tifffile.TiffFileError)


def band_axis_first(array, axes, path):
    """(C, H, W) of a tifffile series whatever its layout: one band (YX), interleaved samples (YXS) or planes
    (SYX, CYX, QYX, IYX: one page per band)."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3 or "Y" not in axes or "X" not in axes:
        raise InputError(f"cannot read image {path}: a {array.ndim}-dimensional TIFF ({axes}); expected "
                         "bands x height x width")
    return np.moveaxis(array, next(i for i, a in enumerate(axes) if a not in "YX"), 0)


def band_header(path):
    """``(band count, dtype name, (width, height))`` of an N-band TIFF from its header (no pixel is read)."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, dtype = series.shape, series.axes, np.dtype(series.dtype).name
    except TIFF_ERRORS as error:
        raise InputError(f"cannot read image {path}: {error}") from None
    if len(shape) == 2:
        return 1, dtype, (shape[1], shape[0])
    if len(shape) != 3 or "Y" not in axes or "X" not in axes:
        raise InputError(f"cannot read image {path}: a {len(shape)}-dimensional TIFF ({axes}); expected "
                         "bands x height x width")
    band = next(i for i, a in enumerate(axes) if a not in "YX")
    return shape[band], dtype, (shape[axes.index("X")], shape[axes.index("Y")])


def read_bands(path):
    """All bands of an N-band TIFF as a numpy (C, H, W) array at the file's dtype, naming the file on failure."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except TIFF_ERRORS as error:
        raise InputError(f"cannot read image {path}: {error} (scripts/check_dataset.py lists every bad file)") from None
    return band_axis_first(array, axes, path)


def resize_bands(array, size):
    """``Resize((S, S))`` of a (C, H, W) array band by band, as torch (C, S, S) at the array's dtype.

    Bilinear with antialiasing (what torchvision's ``Resize`` does to a tensor), in float32 (exact for
    8- and 16-bit values), rounded back to integers; an image already S x S is kept bit for bit.
    """
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.shape[1:] == (size, size):
        return torch.from_numpy(np.ascontiguousarray(array))
    x = torch.from_numpy(array.astype(np.float32))[None]                                     # (1, C, H, W)
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0]  # (C, S, S)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        y = y.round().clamp(info.min, info.max)
    return y.to(torch.from_numpy(array[:0, 0, 0]).dtype)


def decode_bands(path, size, bands):
    """The bands of ``bands`` (a ``datasets.bands.BandInput``) of one file, resized: (C, S, S) at the files' dtype.
    A file with another band count or dtype than the dataset's is named."""
    array = read_bands(path)
    if (array.shape[0], array.dtype.name) != (bands.count, bands.dtype):
        raise InputError(f"{path} has {array.shape[0]} band(s) of {array.dtype.name}; the dataset's files have "
                         f"{bands.count} of {bands.dtype} (scripts/check_dataset.py lists every such file; "
                         "--skip-bad-images leaves them out)")
    return resize_bands(array[list(bands.bands)], size)


def decode_image(path, size, bands=None):
    """``decode_resized`` (8-bit RGB, the reference) or, with ``bands``, ``decode_bands``."""
    return decode_resized(path, size) if bands is None else decode_bands(path, size, bands)


class SceneDataset(torch.utils.data.Dataset):
    """``(image (C, S, S), label, index)`` over ``(path, label)`` pairs; ``targets`` needs no I/O. The image is
    uint8 RGB, or with ``bands`` (``datasets.bands.BandInput``) the chosen bands at the files' dtype."""

    def __init__(self, samples, size, bands=None):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.size, self.bands = size, bands

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return decode_image(path, self.size, self.bands), label, index
