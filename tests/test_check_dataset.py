"""The dataset check finds every kind of bad or odd file; training refuses unreadable files by name or
leaves them out with --skip-bad-images; every Pillow mode becomes correct RGB (16-bit scaled, not clipped)."""
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import build_splits
from datasets.check import check_dataset
from datasets.folder import build_unseen_split, to_rgb
from datasets.presets import dataset_root

from conftest import REPO, make_image_tree, run_script

CHECK = os.path.join(REPO, "scripts", "check_dataset.py")


def save(image, path, fmt="PNG"):
    image.save(path, fmt)  # the content's format need not match the extension: Pillow reads the header


def grey16(size=8):
    values = np.linspace(0, 65535, size * size).round().astype(np.uint16).reshape(size, size)
    return Image.fromarray(values), values  # uint16 -> mode I;16


@pytest.fixture()
def bad_tree(tmp_path):
    """3 good classes of 12 images, one of them holding a file of every problem kind, an empty class
    folder, and a class with one image. Returns (root, {kind: set of paths relative to root}, class names)."""
    root = make_image_tree(str(tmp_path / "data" / "ds"), classes=3, per_class=12)
    a, b, c = sorted(d for d in os.listdir(root))
    with Image.open(os.path.join(root, a, f"{a}_00.png")) as first:
        ok = first.convert("RGB")
    good = io.BytesIO()
    ok.save(good, "JPEG")
    expected = {}

    def put(kind, rel, write):
        write(os.path.join(root, rel))
        expected.setdefault(kind, set()).add(rel)

    put("empty-file", f"{a}/zero.png", lambda p: Path(p).write_bytes(b""))
    put("unreadable", f"{a}/notes_as.png", lambda p: Path(p).write_text("not an image"))
    jpeg = good.getvalue()
    put("unreadable", f"{a}/truncated.png", lambda p: Path(p).write_bytes(jpeg[: len(jpeg) * 2 // 3]))
    put("mode", f"{b}/grey.png", lambda p: save(ok.convert("L"), p))
    put("mode", f"{b}/grey_alpha.png", lambda p: save(ok.convert("LA"), p))
    put("mode", f"{b}/palette.png", lambda p: save(ok.convert("P"), p))
    put("mode", f"{b}/rgba.png", lambda p: save(ok.convert("RGBA"), p))
    put("mode", f"{b}/cmyk.png", lambda p: save(ok.convert("CMYK"), p, "TIFF"))
    put("mode", f"{b}/sixteen.png", lambda p: save(grey16(32)[0], p, "TIFF"))
    put("size", f"{b}/big.png", lambda p: save(ok.resize((40, 48)), p))
    put("extension-case", f"{c}/upper.PNG", lambda p: save(ok.rotate(180), p))
    put("other-file", f"{c}/readme.txt", lambda p: Path(p).write_text("x"))
    for name in ("dup_x.png", "dup_y.png", "dup_z.png"):  # three copies of one image
        shutil.copy(os.path.join(root, c, f"{c}_05.png"), os.path.join(root, c, name))
    os.makedirs(os.path.join(root, "empty_class"))
    expected["empty-class"] = {"empty_class"}
    os.makedirs(os.path.join(root, "lonely"))
    save(ok.rotate(90), os.path.join(root, "lonely", "only.png"))
    expected["few-train"] = {"lonely"}
    return root, expected, (a, b, c)


def by_kind(report, root):
    found = {}
    for kind, path, _ in report["problems"]:
        found.setdefault(kind, set()).add(os.path.relpath(path, root))
    return found


def test_check_finds_every_kind_of_problem(bad_tree):
    root, expected, (_, b, c) = bad_tree
    report = check_dataset(root, "png", full=True, workers=2)
    found = by_kind(report, root)
    copies = found.pop("duplicate", set()) | found.pop("leak", set())
    assert found == expected
    # Copies: every file identical to another, except the one each group is named after.
    group = sorted(f"{c}/{n}" for n in ("dup_x.png", "dup_y.png", "dup_z.png", f"{c}_05.png"))
    assert copies == set(group[1:])
    # A copy is a leak exactly when its group spans more than one split of the split actually used.
    splits = build_splits(root, "png")
    split_of = {os.path.relpath(p, root): s for s in ("train", "val", "test") for p, _ in splits[s]}
    kinds = {os.path.relpath(p, root): k for k, p, _ in report["problems"] if k in ("duplicate", "leak")}
    spans = len({split_of[g] for g in group}) > 1
    assert set(kinds.values()) == {"leak" if spans else "duplicate"}
    assert sorted(os.path.relpath(p, root) for p in report["bad"]) == sorted(
        expected["empty-file"] | expected["unreadable"])
    details = {os.path.relpath(p, root): d for k, p, d in report["problems"] if k == "mode"}
    assert "16-bit, scaled" in details[f"{b}/sixteen.png"]
    # Counts per class and split are those of the reference split.
    for name, counts in report["counts"].items():
        label = splits["classes"].index(name)
        assert counts == {s: sum(lbl == label for _, lbl in splits[s]) for s in ("train", "val", "test")}
    assert report["totals"] == {s: len(splits[s]) for s in ("train", "val", "test")}


def test_header_check_finds_what_needs_no_decoding(bad_tree):
    root, expected, (a, _, _) = bad_tree
    found = by_kind(check_dataset(root, "png", full=False), root)
    assert found["unreadable"] == {f"{a}/notes_as.png"}  # the truncated file has a valid header
    assert found["empty-file"] == expected["empty-file"] and found["mode"] == expected["mode"]


def test_skipping_bad_files_gives_the_reference_split_of_the_rest(bad_tree, tmp_path):
    root, expected, _ = bad_tree
    bad = expected["empty-file"] | expected["unreadable"]
    skipped = build_splits(root, "png", exclude=[os.path.join(root, p) for p in bad])
    clean = shutil.copytree(root, tmp_path / "clean")  # oracle: the same folder with the files deleted
    for rel in bad:
        os.remove(clean / rel)
    removed = build_splits(str(clean), "png")
    for split in ("train", "val", "test"):
        assert [(os.path.relpath(p, root), y) for p, y in skipped[split]] == \
               [(os.path.relpath(p, clean), y) for p, y in removed[split]]


def test_under_the_unseen_split_leaks_and_short_classes_are_those_of_that_split(tmp_path):
    """Duplicates in every class and an unseen class of 2 images: a pair is a leak when the unseen split puts its
    files in different parts (the oracle: that split, built here), and only a class trained on can be short of
    training images. The script reports the same split's counts."""
    root = make_image_tree(str(tmp_path / "five"), classes=5, per_class=10)
    split = build_unseen_split(root, "png", 42, 0.8, 0.8)
    unseen = split["classes"][split["num_seen"]]
    for name in sorted(os.listdir(os.path.join(root, unseen)))[2:]:
        os.remove(os.path.join(root, unseen, name))
    groups = []  # per class: the 2nd and 4th file (the unseen class: its 2nd only) become copies of the 1st
    for c in sorted(os.listdir(root)):
        names = sorted(os.listdir(os.path.join(root, c)))
        groups.append([os.path.join(root, c, name) for name in names[:1] + names[1:4:2]])
        for copy in groups[-1][1:]:
            shutil.copyfile(groups[-1][0], copy)

    report = check_dataset(root, "png", full=True, split="unseen", fractions=(0.8, 0.8))
    split = build_unseen_split(root, "png", 42, 0.8, 0.8)
    part_of = {path: part for part in ("train", "val", "test") for path, _ in split[part]}
    want = {("leak" if len({part_of[p] for p in group}) > 1 else "duplicate", p) for group in groups for p in group[1:]}
    assert {(kind, p) for kind, p, _ in report["problems"] if kind in ("leak", "duplicate")} == want
    assert {kind for kind, _ in want} == {"leak", "duplicate"}  # both outcomes occur: the test tells them apart
    seen = split["classes"][:split["num_seen"]]
    short = {os.path.join(root, c) for c in seen if sum(1 for _, y in split["train"] if split["classes"][y] == c) < 2}
    assert {p for kind, p, _ in report["problems"] if kind == "few-train"} == short
    assert os.path.join(root, unseen) not in short and report["counts"][unseen] == {"train": 0, "val": 0, "test": 2}
    for part in ("train", "val", "test"):
        counted = sum(n[part] for n in report["counts"].values())
        assert counted == report["totals"][part] == len(split[part])

    done = run_script(CHECK, "--data", str(tmp_path), "--dataset", "five", "--imgEXT", "png", "--split", "unseen")
    assert done.returncode == 0 and "unseen split" in done.stdout
    total = next(line.split() for line in done.stdout.splitlines() if line.startswith("total "))
    assert total == ["total", *(str(len(split[part])) for part in ("train", "val", "test"))]


def test_every_mode_becomes_correct_rgb():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(to_rgb(rgb.convert("RGBA"))), np.asarray(rgb))  # alpha dropped
    assert np.array_equal(np.asarray(to_rgb(rgb.convert("L")))[..., 1], np.asarray(rgb.convert("L")))
    palette = rgb.convert("P")
    assert np.array_equal(np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGB")))
    palette.info["transparency"] = bytes(256)  # Pillow warns when such an image is converted straight to RGB
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGBA").convert("RGB")))
    cmyk = rgb.convert("CMYK")
    assert np.array_equal(np.asarray(to_rgb(cmyk)), np.asarray(cmyk.convert("RGB")))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_is_scaled_not_clipped(mode, tmp_path):
    image, values = grey16()
    image = {"I;16": image, "I;16B": Image.fromarray(values.astype(">u2")), "I": image.convert("I")}[mode]
    assert image.mode == mode
    path = tmp_path / "grey16.tif"
    image.save(path)
    with Image.open(path) as reread:
        out = np.asarray(to_rgb(reread))
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # round half up; no ties
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 0], expected) and np.array_equal(out[..., 2], expected)
    assert len(np.unique(out)) > 50  # Pillow's own convert clips: everything above 255 would be white


@pytest.mark.slow
def test_check_dataset_script_reports_and_exits_1_on_bad_files(bad_tree, tmp_path):
    root, _, _ = bad_tree
    report = tmp_path / "report.json"
    done = run_script(CHECK, "--data", os.path.dirname(root), "--dataset", "ds", "--imgEXT", "png", "--json", report,
                      cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "unreadable: 2" in done.stdout and "empty-file: 1" in done.stdout
    assert "leak: 3" in done.stdout or "duplicate: 3" in done.stdout
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["class", "train", "val", "test"]
    written = json.loads(report.read_text())
    assert written["totals"] == {s: len(build_splits(root, "png")[s]) for s in ("train", "val", "test")}


@pytest.mark.slow
def test_check_dataset_script_exits_0_on_a_clean_dataset(image_tree, tmp_path):
    done = run_script(CHECK, "--data", image_tree, "--dataset", "tiny", "--imgEXT", "png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no problems found" in done.stdout and done.stdout.splitlines()[-2].split() == ["total", "32", "4", "12"]


def test_preset_finds_the_archive_layout(tmp_path):
    (tmp_path / "UCMerced_LandUse" / "Images" / "beach").mkdir(parents=True)
    assert dataset_root(str(tmp_path), "UCMerced_LandUse") == str(tmp_path / "UCMerced_LandUse" / "Images")
    (tmp_path / "AID" / "Beach").mkdir(parents=True)
    assert dataset_root(str(tmp_path), "AID") == str(tmp_path / "AID")


def test_a_truncated_tiff_is_one_line_without_pillows_warnings(tmp_path):
    """Pillow warns (``Corrupt EXIF data``) and tifffile logs on a truncated TIFF; the user gets the project's one
    line for the file instead: check_dataset.py's report, and training's error. (Warnings are errors here: one
    that escaped would fail the test.)"""
    root = make_image_tree(str(tmp_path / "data" / "ds"), classes=2, per_class=10, ext="tif")
    victim = Path(root) / sorted(os.listdir(root))[0] / sorted(os.listdir(Path(root) / sorted(os.listdir(root))[0]))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    done = run_script(CHECK, "--data", tmp_path / "data", "--dataset", "ds", "--imgEXT", "tif")
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "Warning" not in out and "EXIF" not in out and "invalid offset" not in out, out
    assert [line for line in done.stdout.splitlines() if victim.name in line] == \
        [line for line in done.stdout.splitlines() if line.startswith("unreadable: 1")]
    train = run_script(os.path.join(REPO, "train_SNCA_CE", "main.py"), "--data", tmp_path / "data", "--dataset", "ds",
                       "--imgEXT", "tif", "--check-images", "full", "--out", tmp_path / "runs", "--num_workers", "0")
    lines = train.stderr.strip().splitlines()
    assert train.returncode != 0 and len(lines) == 1 and "1 unreadable image(s)" in lines[0], train.stderr
    assert victim.name in lines[0] and "Warning" not in train.stderr
