"""The embedded default dataset is deterministic, complete, generated once and loads like real data."""
import hashlib
import os
from pathlib import Path

from datasets import build_splits, make_synthetic
from datasets.synthetic import CLASSES


def digest(root):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            h.update(Path(folder, f).read_bytes())
    return h.hexdigest()


def test_deterministic_and_generated_once(tmp_path):
    a = make_synthetic(str(tmp_path / "a" / "synthetic"), per_class=5, size=32)
    b = make_synthetic(str(tmp_path / "b" / "synthetic"), per_class=5, size=32)
    assert digest(a) == digest(b)
    first = os.path.join(a, CLASSES[0], f"{CLASSES[0]}_000.png")
    os.utime(first, (1e9, 1e9))  # an old stamp: a rewrite, however soon, would set it to now
    make_synthetic(a, per_class=5, size=32)
    assert os.path.getmtime(first) == 1e9
    assert not os.path.exists(a + ".tmp")


def test_goes_through_the_folder_loader(tmp_path):
    root = make_synthetic(str(tmp_path / "synthetic"), per_class=10, size=32)
    splits = build_splits(root, ext="png")
    assert splits["classes"] == sorted(CLASSES)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7 * len(CLASSES), len(CLASSES), 2 * len(CLASSES)]
