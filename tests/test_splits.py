"""datasets.build_splits against the reference generator's order and the published counts (docs/method.md section 3)."""
import json
import os
import random
from pathlib import Path

import pytest

from datasets import build_splits
from datasets.folder import split_class
from lib.errors import InputError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def reference_split(files, seed=42):
    """The reference's code path, written out: reset the seed, shuffle, cut at int(0.7 n) and int(0.8 n)."""
    files = sorted(files)
    random.seed(seed)
    random.shuffle(files)
    n = len(files)
    return files[: int(0.7 * n)], files[int(0.7 * n): int(0.8 * n)], files[int(0.8 * n):]


def touch_tree(root, files_per_class):
    for name, files in files_per_class.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for f in files:
            Path(root, name, f).touch()


def test_equals_the_reference_order(tmp_path):
    ref = json.loads(Path(FIXTURES, "reference_split.json").read_text())
    touch_tree(tmp_path, ref["files"])
    got = build_splits(str(tmp_path), ext="tif", seed=42)
    assert got["classes"] == ref["classes"]
    for split in ("train", "val", "test"):
        ours = [[os.path.relpath(p, tmp_path).replace(os.sep, "/"), label] for p, label in got[split]]
        assert ours == ref["split"][split]


@pytest.mark.parametrize("n, counts", [(700, (489, 71, 140)), (10, (7, 1, 2)), (100, (70, 10, 20)), (1, (0, 0, 1))])
def test_published_counts(n, counts):
    assert tuple(map(len, split_class([f"{i}.tif" for i in range(n)]))) == counts


def test_nwpu_totals():
    """NWPU-RESISC45: 45 classes x 700 images give 22,005 / 3,195 / 6,300."""
    per_class = tuple(map(len, split_class(range(700))))
    assert tuple(45 * c for c in per_class) == (22005, 3195, 6300)


@pytest.mark.parametrize("seed", range(5))
def test_random_class_sizes_match_the_reference_code(tmp_path, seed):
    rng = random.Random(seed)
    files = {f"class{c}": [f"img{rng.randrange(10**6)}_{i}.tif" for i in range(rng.randint(1, 60))] for c in range(4)}
    touch_tree(tmp_path, files)
    got = build_splits(str(tmp_path), ext="tif")
    for label, name in enumerate(sorted(files)):
        for split, want in zip(("train", "val", "test"), reference_split(files[name])):
            assert [os.path.basename(p) for p, lab in got[split] if lab == label] == want


def test_extension_is_case_insensitive(tmp_path):
    touch_tree(tmp_path, {"a": ["x.TIF", "y.tif", "z.Tif", "note.txt"], "b": [".tif", "w.tiff"]})
    got = build_splits(str(tmp_path), ext=".tif")
    assert sorted(os.path.basename(p) for s in ("train", "val", "test") for p, _ in got[s]) == [".tif", "x.TIF",
                                                                                              "y.tif", "z.Tif"]


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(InputError, match="missing"):
        build_splits(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="no class sub-folders"):
        build_splits(str(tmp_path))
    touch_tree(tmp_path, {"a": ["x.png"]})
    with pytest.raises(InputError, match=r"no '\*\.tif' files.*--imgEXT"):
        build_splits(str(tmp_path), ext="tif")
