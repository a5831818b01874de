"""datasets.build_splits against the reference generator's order and the published counts (docs/method.md section 3);
the authors' unseen-class split against their code's output and their code written out."""
import json
import os
import random
from pathlib import Path

import pytest

from datasets import build_splits
from datasets.folder import build_unseen_split, split_class
from errors import InputError

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


# ---- the authors' unseen-class split (DataGenClsSplit) ----

def authors_unseen_split(files, seed=42, seen_fraction=0.8, train_fraction=0.8):
    """DataGenClsSplit's code path, written out: seed once, draw the seen classes, then shuffle and cut each
    seen class's sorted files on the same stream; the unseen classes (a set there) sorted here."""
    classes = sorted(files)
    random.seed(seed)
    seen = random.sample(classes, int(len(classes) * seen_fraction))
    train, val = [], []
    for label, name in enumerate(seen):
        shuffled = sorted(files[name])
        random.shuffle(shuffled)
        cut = int(train_fraction * len(shuffled))
        train += [[f"{name}/{f}", label] for f in shuffled[:cut]]
        val += [[f"{name}/{f}", label] for f in shuffled[cut:]]
    unseen = sorted(set(classes) - set(seen))
    test = [[f"{name}/{f}", len(seen) + i] for i, name in enumerate(unseen) for f in sorted(files[name])]
    return seen + unseen, train, val, test


def relative(root, samples):
    return [[os.path.relpath(p, root).replace(os.sep, "/"), label] for p, label in samples]


def test_unseen_split_equals_the_authors_output(tmp_path):
    ref = json.loads(Path(FIXTURES, "reference_unseen_split.json").read_text())
    touch_tree(tmp_path, {f"class_{c:02d}": [f"img_{i:03d}.tif" for i in range(n)]
                          for c, n in enumerate(ref["class_sizes"])})
    got = build_unseen_split(str(tmp_path), ext="tif")
    assert got["classes"] == ref["seen_classes_in_label_order"] + ref["unseen_classes_sorted"]
    assert got["num_seen"] == len(ref["seen_classes_in_label_order"]) == int(0.8 * 12)
    assert relative(tmp_path, got["train"]) == ref["train"]
    assert relative(tmp_path, got["val"]) == ref["val"]
    test = relative(tmp_path, got["test"])
    assert [f for f, _ in test] == ref["test_files_sorted"]
    assert [label for _, label in test] == [9 + ref["unseen_classes_sorted"].index(f.split("/")[0]) for f, _ in test]


@pytest.mark.parametrize("seed, seen_fraction, train_fraction", [(42, 0.8, 0.8), (0, 0.8, 0.8), (7, 0.5, 0.7),
                                                                  (123, 0.75, 0.9), (42, 0.3, 0.5)])
def test_unseen_split_variants_match_the_authors_code(tmp_path, seed, seen_fraction, train_fraction):
    rng = random.Random(seed)
    files = {f"c{c:02d}": [f"img{rng.randrange(10**6)}_{i}.tif" for i in range(rng.randint(1, 30))]
             for c in range(rng.randint(7, 15))}
    touch_tree(tmp_path, files)
    got = build_unseen_split(str(tmp_path), "tif", seed, seen_fraction, train_fraction)
    classes, train, val, test = authors_unseen_split(files, seed, seen_fraction, train_fraction)
    assert got["classes"] == classes
    assert [relative(tmp_path, got[s]) for s in ("train", "val", "test")] == [train, val, test]


def test_unseen_cut_is_the_authors_literal():
    """The cut multiplies n by the fraction as given (never a sum of ratios, whose 0.7 + 0.1 rounds below 0.8):
    with the literal 0.8, int(0.8 n) is exactly 4n // 5 for every n, so the cut is the authors' own."""
    assert all(int(0.8 * n) == 4 * n // 5 for n in range(100_000))
    assert int((0.7 + 0.1) * 10) == 7  # what a sum would have given


def test_unseen_split_counts_of_the_paper_datasets(tmp_path):
    """NWPU-RESISC45's shape, 45 classes x 700 (scaled down to 45 x 10): 36 seen classes, 8 / 2 per seen class."""
    touch_tree(tmp_path, {f"c{c:02d}": [f"{i}.tif" for i in range(10)] for c in range(45)})
    got = build_unseen_split(str(tmp_path))
    assert (got["num_seen"], len(got["train"]), len(got["val"]), len(got["test"])) == (36, 36 * 8, 36 * 2, 9 * 10)
    assert {label for _, label in got["train"]} == {label for _, label in got["val"]} == set(range(36))
    assert {label for _, label in got["test"]} == set(range(36, 45))


def test_unseen_split_leaves_excluded_files_out(tmp_path):
    touch_tree(tmp_path, {f"c{c}": [f"{i}.tif" for i in range(5)] for c in range(5)})
    bad = {os.path.join(str(tmp_path), name) for name in ("c0/1.tif", "c4/3.tif")}
    got = build_unseen_split(str(tmp_path), exclude=bad)
    listed = {p for s in ("train", "val", "test") for p, _ in got[s]}
    assert len(listed) == 23 and not listed & bad


@pytest.mark.parametrize("classes, message", [(1, "fewer than 2 seen"), (2, "fewer than 2 seen")])
def test_unseen_split_needs_three_classes(tmp_path, classes, message):
    touch_tree(tmp_path, {f"c{c}": ["a.tif", "b.tif"] for c in range(classes)})
    with pytest.raises(InputError, match=f"--split unseen: .* {classes} classes.*{message}"):
        build_unseen_split(str(tmp_path))


@pytest.mark.parametrize("flag, fractions", [("--seen-fraction", (1.0, 0.8)), ("--train-fraction", (0.8, 0.0))])
def test_unseen_split_fractions_are_checked(tmp_path, flag, fractions):
    touch_tree(tmp_path, {f"c{c}": ["a.tif"] for c in range(5)})
    with pytest.raises(InputError, match=flag):
        build_unseen_split(str(tmp_path), "tif", 42, *fractions)
