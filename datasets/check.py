"""What is wrong with a folder dataset, found before training (``scripts/check_dataset.py`` prints it).

Remote-sensing archives hold zero-byte and truncated files, 16-bit, palette and CMYK images, odd
sizes, upper-case extensions, copies of one image under two names and stray non-image files. Each
finding is a ``(kind, path, detail)`` problem; the kinds are in ``KINDS``. Only unreadable files stop
training (``--skip-bad-images`` leaves them out of the split instead); the rest is reported.
"""
import collections
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from datasets.folder import (
    BAND_DTYPES,
    SIXTEEN_BIT,
    SPLIT_NAMES,
    InputError,
    band_header,
    build_split,
    list_class_files,
    quiet_pillow,
    read_bands,
    to_rgb,
)

KINDS = {
    "unreadable": "cannot be decoded (corrupt, truncated or not an image)",
    "multiband": "multi-band TIFF that only --bands reads (e.g. --bands all, or the bands to keep: --bands 4,3,2)",
    "empty-file": "zero bytes",
    "bands": "band count or data type other than the dataset's most common one (--bands)",
    "mode": "not 8-bit RGB; converted to RGB as the detail says",
    "size": "size other than the dataset's most common one (every image is resized to --image-size anyway)",
    "extension-case": "extension matches --imgEXT only ignoring case: included here, skipped by the reference's glob",
    "duplicate": "same bytes as another file of the dataset",
    "leak": "same bytes as a file of another split: the evaluation sees a training image",
    "few-train": "class with fewer than 2 training images: its images have no positive in the memory",
    "empty-class": "class folder without any image of --imgEXT: it still takes a label",
    "other-file": "file without the --imgEXT extension, not used",
}
BAD = ("unreadable", "multiband", "empty-file", "bands")
STOPS, SKIPPED = "training stops unless --skip-bad-images", "left out of the split (--skip-bad-images)"
CONVERSIONS = {
    "1": "bilevel, replicated to 3 channels", "L": "grey, replicated to 3 channels",
    "LA": "grey + alpha: alpha dropped", "La": "grey + alpha: alpha dropped", "P": "palette, mapped to RGB",
    "PA": "palette + alpha: alpha dropped", "RGBA": "alpha dropped", "RGBa": "alpha dropped",
    "CMYK": "Pillow's CMYK to RGB (no colour profile)", "F": "32-bit float, clipped to [0, 255]",
    **dict.fromkeys(SIXTEEN_BIT, "16-bit, scaled to 8 bits (x * 255 / 65535)"),
}
HASH_BLOCK = 1 << 20


def inspect(path, full):
    """``(mode, (width, height), problem)`` of one file from its header, or with ``full`` from a complete
    decode; ``problem`` is None or ``(kind, detail)``."""
    if os.path.getsize(path) == 0:
        return None, None, ("empty-file", "")
    quiet_pillow()
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
            if full:
                to_rgb(image)
        return mode, size, None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return None, None, multiband(path) or ("unreadable", str(error).replace(f" '{path}'", ""))


def multiband(path):
    """``("multiband", '<count>-band <dtype>')`` for a TIFF that Pillow cannot read and tifffile reads whole, else
    None (a damaged file stays unreadable)."""
    if not path.lower().endswith((".tif", ".tiff")):
        return None
    try:
        array = read_bands(path)
    except Exception:  # a probe: whatever tifffile raises, the file is not a readable N-band TIFF
        return None
    return "multiband", f"{array.shape[0]}-band {array.dtype.name}"


def inspect_bands(path, full):
    """``inspect`` of an N-band TIFF (``--bands``), read with tifffile: ``mode`` is '<count> x <dtype>'."""
    if os.path.getsize(path) == 0:
        return None, None, ("empty-file", "")
    try:
        count, dtype, size = band_header(path)
        if full:
            read_bands(path)
    except InputError as error:
        return None, None, ("unreadable", str(error).removeprefix(f"cannot read image {path}: "))
    return f"{count} x {dtype}", size, None


def band_problems(paths, found):
    """The most common '<count> x <dtype>' of the files, and a "bands" problem for each file with another (or
    with a dtype that is not read: complex, 64-bit integers)."""
    layouts = collections.Counter(mode for mode, _, _ in found if mode)
    if not layouts:
        return None, []
    common = layouts.most_common(1)[0][0]
    return common, [("bands", p, f"{mode}, most are {common}") for p, (mode, _, _) in zip(paths, found)
                    if mode and (mode != common or mode.split(" x ")[1] not in BAND_DTYPES)]


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def duplicates(paths):
    """Groups of files with identical bytes; only files sharing a size with another are read."""
    by_size = collections.defaultdict(list)
    for path in paths:
        by_size[os.path.getsize(path)].append(path)
    candidates = [p for group in by_size.values() if len(group) > 1 for p in group]
    by_hash = collections.defaultdict(list)
    for path in candidates:
        by_hash[digest(path)].append(path)
    return [sorted(group) for group in by_hash.values() if len(group) > 1]


def check_dataset(root, ext, split_seed=42, full=False, workers=1, skip_bad=False, bands=None, split="reference",
                  fractions=(0.8, 0.8)):
    """Inspect every file of ``root`` = ``<data>/<dataset>``; with ``bands`` (``--bands``) as N-band TIFFs.

    Returns ``{"classes", "counts" (class -> split -> images), "totals" (split -> images), "problems"
    [(kind, path, detail)], "bad" [paths], "bands" ('<count> x <dtype>' of most files, or None)}``; the counts,
    the leaks and the classes with too few training images are those of the split training would use: ``split``
    'reference', or 'unseen' with ``fractions`` (seen classes, training images of a seen class), without the bad
    files when ``skip_bad``. Under 'unseen' a class never trained on is not short of training images.
    """
    classes, files = list_class_files(root, ext)
    suffix = "." + ext.lstrip(".").lower()
    paths = [os.path.join(root, c, f) for c in classes for f in files[c]]
    problems = [("empty-class", os.path.join(root, c), "") for c in classes if not files[c]]
    for c in classes:
        for name in sorted(os.listdir(os.path.join(root, c))):
            path = os.path.join(root, c, name)
            if not name.lower().endswith(suffix) and not os.path.isdir(path):
                problems.append(("other-file", path, ""))
            elif not name.endswith(suffix):
                problems.append(("extension-case", path, ""))
    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow decodes and hashlib hashes without the GIL
        found = list(pool.map(lambda p: (inspect_bands if bands else inspect)(p, full), paths))
    problems += [(problem[0], p, problem[1]) for p, (_, _, problem) in zip(paths, found) if problem]
    layout = None
    if bands:
        layout, odd = band_problems(paths, found)
        problems += odd
    else:
        problems += [("mode", p, f"{mode}: {CONVERSIONS.get(mode, 'converted by Pillow')}")
                     for p, (mode, _, _) in zip(paths, found) if mode not in (None, "RGB")]
    bad = {p for kind, p, _ in problems if kind in BAD}
    bad = [p for p in paths if p in bad]
    sizes = collections.Counter(size for _, size, _ in found if size)
    if sizes:
        common = sizes.most_common(1)[0][0]
        problems += [("size", p, f"{size[0]}x{size[1]}, most are {common[0]}x{common[1]}")
                     for p, (_, size, _) in zip(paths, found) if size and size != common]

    splits = build_split(root, ext, split_seed, split, fractions, exclude=bad if skip_bad else ())
    split_of = {path: split for split in SPLIT_NAMES for path, _ in splits[split]}
    for group in duplicates([p for p in paths if p not in bad]):
        for path in group[1:]:
            kind = "leak" if len({split_of.get(p) for p in group}) > 1 else "duplicate"
            problems.append((kind, path, f"same as {group[0]} ({' / '.join(split_of.get(p, '-') for p in group)})"))
    counts = {c: {part: 0 for part in SPLIT_NAMES} for c in classes}
    for part in SPLIT_NAMES:
        for _, label in splits[part]:
            counts[splits["classes"][label]][part] += 1  # the split's labels: under 'unseen', in draw order
    trained = set(splits["classes"][:splits.get("num_seen", len(splits["classes"]))])
    problems += [("few-train", os.path.join(root, c), f"{n['train']} training image(s)")
                 for c, n in counts.items() if files[c] and c in trained and n["train"] < 2]
    totals = {part: len(splits[part]) for part in SPLIT_NAMES}
    return {"classes": classes, "counts": counts, "totals": totals, "problems": problems, "bad": bad, "bands": layout}


def summary(report, root, limit=3, skipping=False):
    """Lines for the terminal: one per kind of problem, with its count and up to ``limit`` examples; the bad
    kinds say what becomes of them (``skipping``: --skip-bad-images is given)."""
    by_kind = collections.defaultdict(list)
    for kind, path, detail in report["problems"]:
        by_kind[kind].append(os.path.relpath(path, root) + (f" ({detail})" if detail else ""))
    lines = []
    for kind in KINDS:
        if found := by_kind.get(kind):
            more = f", and {len(found) - limit} more" if len(found) > limit else ""
            text = f"{KINDS[kind]}: {SKIPPED if skipping else STOPS}" if kind in BAD else KINDS[kind]
            lines.append(f"{kind}: {len(found)} - {text}: {'; '.join(found[:limit])}{more}")
    return lines
