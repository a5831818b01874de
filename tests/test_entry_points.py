"""Both entry points end to end on generated data: train, validate, write the run folder, resume; bad input."""
import glob
import json
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import MAX_ERROR_CHARS, REPO, copy_run, run_script, untimed

SCRIPTS = {
    "mb": os.path.join(REPO, "train_SNCA_CE", "main.py"),
    "mu": os.path.join(REPO, "train_SNCA_CE_MC", "main.py"),
}
METRIC_KEYS = {"epoch", "loss", "loss_snca", "loss_ce", "lr", "knn_acc", "knn_acc_bank", "knn_acc_extracted", "time_s"}
TAGS = {"train/loss", "train/loss_snca", "train/loss_ce", "train/lr", "val/knn_acc"}


def run(method, *flags, cwd):
    """Run an entry point from ``cwd`` (not the repository), in this process, and return the completed process."""
    return run_script(SCRIPTS[method], *flags, cwd=cwd)


def small_run(method, data, out, *extra, epochs=2, run_name="run"):
    return ["--data", data, "--dataset", "tiny", "--imgEXT", "png", "--image-size", "32", "-b", "16",
            "--num_workers", "0", "--pretrained", "none", "--epochs", str(epochs), "--lr", "0.01",
            "--out", out, "--run-name", run_name, *extra]


def metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# The flags of the runs shared (``entry_runs`` in conftest) by the tests of the run folder, of resuming, of the
# baselines' SNCA rows and of --cache none: two epochs of 2 steps each.
CACHED = ("--cache", "memory", "--num_workers", "0")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mb", "mu"])
def test_trains_writes_the_run_folder_and_resumes(method, entry_runs, image_tree, tmp_path):
    folder, done = entry_runs(method, *CACHED)
    name = os.path.basename(folder)
    assert "val kNN@10" in done.stdout and "epoch 2/2" in done.stdout

    args = json.loads(Path(folder, "args.json").read_text())
    assert args["memory"] == method and "git_commit" in args
    assert args["amp"] == "none"  # the precision it trained in (the CPU's default), not the flag's absence
    assert args["command"].endswith(" ".join(["--run-name", name, *CACHED]))  # the whole command
    lines = metrics(folder)
    assert [m["epoch"] for m in lines] == [1, 2] and all(METRIC_KEYS <= m.keys() for m in lines)
    assert all(0 <= m["knn_acc"] <= 1 for m in lines)
    own = "knn_acc_bank" if method == "mb" else "knn_acc_extracted"
    assert all(m["knn_acc"] == m[own] for m in lines)
    assert all((m["memory_momentum"] is None) == (method == "mu") for m in lines)  # MU has no memory momentum
    for split, count in (("train", 4 * 8), ("val", 4 * 1), ("test", 4 * 3)):
        rows = Path(folder, "splits", f"{split}.txt").read_text().splitlines()
        assert len(rows) == count and all(os.path.isfile(os.path.join(image_tree, "tiny", r.split()[0])) for r in rows)

    events = EventAccumulator(os.path.join(folder, "tb"))
    events.Reload()
    assert TAGS <= set(events.Tags()["scalars"])
    assert ("train/memory_momentum" in events.Tags()["scalars"]) == (method == "mb")
    assert [e.step for e in events.Scalars("val/knn_acc")] == [1, 2]

    for checkpoint in ("last.pt", "best.pt"):
        state = torch.load(os.path.join(folder, "checkpoints", checkpoint), weights_only=True)
        assert {"model", "memory", "optimizer", "epoch", "best_acc", "args", "rng"} <= state.keys()
    assert any(key.startswith("key_encoder.") for key in state["memory"]) == (method == "mu")  # MU owns it

    # resumed as the resumed-run test below resumes it (MB through last.pt, MU through the folder): the same run
    resumed_folder, resumed = entry_runs(method, *CACHED, resumed=3, via="file" if method == "mb" else "folder")
    assert "epoch 3/3" in resumed.stdout and "epoch 1/3" not in resumed.stdout
    assert [m["epoch"] for m in metrics(resumed_folder)] == [1, 2, 3]
    assert torch.load(os.path.join(resumed_folder, "checkpoints", "last.pt"), weights_only=True)["epoch"] == 3

    out = str(tmp_path / "runs")
    again = copy_run(resumed_folder, os.path.join(out, "run"))
    finished = run(method, *small_run(method, image_tree, out, *CACHED, "--resume",
                                       os.path.join(again, "checkpoints", "last.pt"), epochs=3), cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "nothing to train after epoch 3" in finished.stdout and [m["epoch"] for m in metrics(again)] == [1, 2, 3]


@pytest.mark.slow
@pytest.mark.parametrize("method, cache, workers, resume", [
    ("mb", "memory", "0", "file"), ("mb", "none", "2", "folder"),
    ("mu", "memory", "0", "folder"), ("mu", "none", "2", "file"),
])
def test_resumed_run_equals_a_straight_run(method, cache, workers, resume, entry_runs):
    """Two epochs, stop, one more epoch = three epochs straight (CPU, same seed): losses, accuracies, weights,
    memory and key encoder alike, with images decoded once or by loader workers every epoch."""
    extra = ("--cache", cache, "--num_workers", workers)
    straight, _ = entry_runs(method, *extra, epochs=3)
    split, _ = entry_runs(method, *extra, resumed=3, via=resume)
    keys = ("loss", "loss_snca", "loss_ce", "lr", "knn_acc", "knn_acc_bank", "knn_acc_extracted", "memory_momentum")
    a, b = metrics(straight), metrics(split)
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]
    sa = torch.load(os.path.join(straight, "checkpoints", "last.pt"), weights_only=True)
    sb = torch.load(os.path.join(split, "checkpoints", "last.pt"), weights_only=True)
    for part in ("model", "memory", "optimizer"):  # the memory entry holds MU's key encoder
        assert_same(sa[part], sb[part], part)


@pytest.mark.slow
@pytest.mark.parametrize("method, loss, term", [("mb", "snca", "snca"), ("mu", "snca", "snca"),
                                                ("mb", "d-cnn", "dcnn"), ("mb", "triplet", "triplet")])
def test_baselines_train_and_resume_exactly(method, loss, term, entry_runs):
    """The paper's baselines (docs/method.md section 9) share the loop, logging and checkpoints: 2 epochs + 1 resumed
    equal 3 straight; the triplet's draws come from decoded files here (--cache none)."""
    extra = ("--method", loss, *(("--cache", "none") if loss == "triplet" else ()))
    straight, _ = entry_runs(method, *extra, epochs=3)
    split, _ = entry_runs(method, *extra, resumed=3)
    lines = metrics(straight)
    assert untimed(lines) == untimed(metrics(split))
    assert [("startup_s" in m) for m in metrics(split)] == [True, False, True]  # once per process
    memory = loss in ("snca", "snca-ce")
    for m in lines:
        assert m[f"loss_{term}"] > 0 and (m["loss_ce"] > 0) == (loss == "d-cnn")
        assert m["knn_acc"] == m["knn_acc_bank" if memory and method == "mb" else "knn_acc_extracted"]
        assert (m["knn_acc_bank"] is not None) == memory
    state = torch.load(os.path.join(split, "checkpoints", "last.pt"), weights_only=True)
    assert state["args"]["method"] == loss and (state["memory"] is not None) == memory


def assert_same(a, b, where):
    """Nested state dicts hold bitwise-equal tensors and equal plain values."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mb", "mu"])
def test_help_documents_the_flags(method, tmp_path):
    done = run(method, "--help", cwd=tmp_path)
    assert done.returncode == 0
    for flag in ("--data", "--dataset", "--batch-size", "--num_workers", "--epochs", "--lr", "--resume", "--dim",
                 "--imgEXT", "--temperature", "--margin", "--model", "--lambda_", "--seed", "--device",
                 "--image-size", "--pretrained", "--weights", "--out", "--run-name", "--knn-k"):
        assert flag in done.stdout
    assert all(flag in done.stdout for flag in (["--memory-momentum"] if method == "mb" else
                                                ["--key-momentum", "--ema-momentum"]))
    assert "paper: 0.05" in done.stdout


def one_line_error(done, *needles):
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()  # a progress bar may stand before it
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, done.stderr
    assert len(lines[-1]) <= MAX_ERROR_CHARS, lines[-1]  # one short line, the fix included
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.mark.slow
def test_bad_input_gets_one_line_naming_the_path_or_flag(image_tree, tmp_path):
    base = ["--pretrained", "none", "--image-size", "32", "--num_workers", "0", "--out", str(tmp_path / "runs")]
    missing = str(tmp_path / "nowhere")
    one_line_error(run("mb", "--data", missing, "--dataset", "x", *base, cwd=tmp_path), missing, "--data")
    (tmp_path / "flat" / "ds").mkdir(parents=True)
    (tmp_path / "flat" / "ds" / "a.png").write_bytes(b"")
    one_line_error(run("mb", "--data", str(tmp_path / "flat"), "--dataset", "ds", *base, cwd=tmp_path),
                   "no class sub-folders")
    one_line_error(run("mb", "--data", image_tree, "--dataset", "tiny", "--imgEXT", "jpg", *base, cwd=tmp_path),
                   "*.jpg", "--imgEXT")
    one_line_error(run("mu", "--data", image_tree, "--dataset", "tiny", "--imgEXT", "png", "--resume",
                       str(tmp_path / "none.pt"), *base, cwd=tmp_path), "--resume", "none.pt")
    assert not os.path.exists(tmp_path / "runs")  # nothing was started


def truncate(path):
    """Cut an image to two thirds: its header still reads, its decoding fails."""
    Path(path).write_bytes(Path(path).read_bytes()[: os.path.getsize(path) * 2 // 3])


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_image_failing_to_decode_is_named(tmp_path, workers):
    """Past the header check (the default), a truncated file stops decoding, named."""
    from conftest import make_image_tree

    root = make_image_tree(str(tmp_path / "data" / "ds"), classes=2, per_class=10)
    bad = sorted(glob.glob(os.path.join(root, "*", "*.png")))[3]
    truncate(bad)
    done = run("mb", "--data", str(tmp_path / "data"), "--dataset", "ds", "--imgEXT", "png", "--image-size", "32",
               "--pretrained", "none", "--num_workers", workers, "--epochs", "1", "--out", str(tmp_path / "runs"),
               cwd=tmp_path)
    one_line_error(done, "cannot read image", os.path.basename(bad), "--skip-bad-images")


@pytest.mark.slow
def test_unreadable_images_are_refused_by_name_or_skipped(tmp_path):
    from conftest import make_image_tree

    root = make_image_tree(str(tmp_path / "data" / "ds"), classes=3, per_class=12)
    files = sorted(glob.glob(os.path.join(root, "*", "*.png")))
    Path(files[3]).write_bytes(b"\x89PNG broken")
    Path(files[20]).write_bytes(b"")
    truncate(files[30])
    bad = [files[3], files[20], files[30]]
    flags = ["--data", str(tmp_path / "data"), "--dataset", "ds", "--imgEXT", "png", "--image-size", "32",
             "--pretrained", "none", "--num_workers", "0", "--epochs", "1", "--out", str(tmp_path / "runs"),
             "--check-images", "full"]
    one_line_error(run("mu", *flags, cwd=tmp_path), "3 unreadable image(s)", *(os.path.basename(p) for p in bad))
    assert not os.path.exists(tmp_path / "runs")  # refused before anything was written

    done = run("mu", *flags, "--skip-bad-images", "--run-name", "skip", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning: unreadable: 2" in done.stderr and "warning: empty-file: 1" in done.stderr
    folder = tmp_path / "runs" / "skip"
    listed = [row.split()[0] for split in ("train", "val", "test")
              for row in (folder / "splits" / f"{split}.txt").read_text().splitlines()]
    assert len(listed) == 36 - 3 and not {os.path.relpath(p, root) for p in bad} & set(listed)
    check = json.loads((folder / "dataset_check.json").read_text())
    assert sorted(check["bad"]) == sorted(bad)


@pytest.mark.slow
def test_preset_fills_the_extension_and_reports_a_wrong_class_count(tmp_path):
    from conftest import make_image_tree

    make_image_tree(str(tmp_path / "data" / "WHU-RS19"), classes=3, per_class=10, ext="jpg")
    done = run("mb", "--data", str(tmp_path / "data"), "--dataset", "WHU-RS19", "--image-size", "32", "--pretrained",
               "none", "--num_workers", "0", "--epochs", "1", "--out", str(tmp_path / "runs"), "--run-name", "whu",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "WHU-RS19 as published" in done.stderr and "19 classes" in done.stderr and "3 classes" in done.stderr
    assert json.loads((tmp_path / "runs" / "whu" / "args.json").read_text())["imgEXT"] == "jpg"


@pytest.mark.slow
def test_decoding_every_epoch_trains_exactly_as_the_cache(entry_runs):
    """``--cache none`` (decoded per epoch by workers) and ``--cache memory`` give the same run on CPU."""
    memory, _ = entry_runs("mu", "--cache", "memory", "--num_workers", "0")
    none, _ = entry_runs("mu", "--cache", "none", "--num_workers", "2")
    keys = ("loss", "loss_snca", "loss_ce", "knn_acc_bank", "knn_acc_extracted")
    a, b = metrics(memory), metrics(none)
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]


@pytest.mark.slow
def test_odd_but_valid_settings_work_and_misuse_is_refused(tmp_path):
    from conftest import make_image_tree

    data = tmp_path / "données été"  # non-ASCII and a space
    make_image_tree(str(data / "scènes"), classes=3, per_class=7)
    make_image_tree(str(data / "scènes" / "zz_pair"), classes=1, per_class=2)  # 1 training image, 1 test image
    os.rename(glob.glob(str(data / "scènes" / "zz_pair" / "*"))[0], data / "scènes" / "zz_pair_class")
    os.rmdir(data / "scènes" / "zz_pair")
    out = str(tmp_path / "runs")
    flags = ["--data", str(data), "--dataset", "scènes", "--imgEXT", "png", "--image-size", "32", "--pretrained",
             "none", "--num_workers", "0", "--epochs", "1", "--out", out, "--run-name", "odd"]
    done = run("mu", *flags, "-b", "1000", "--knn-k", "1000", cwd=tmp_path)  # batch > training set, k > references
    assert done.returncode == 0, done.stderr
    assert [m["epoch"] for m in metrics(os.path.join(out, "odd"))] == [1]
    assert "few-train: 1" in done.stderr and "zz_pair_class" in done.stderr
    one_line_error(run("mu", *flags, cwd=tmp_path), "already exists", "--resume")  # a finished run is kept
    assert [m["epoch"] for m in metrics(os.path.join(out, "odd"))] == [1]
    # --epochs 0 would leave a run folder without a checkpoint: refused in one line, nothing written
    one_line_error(run("mb", *flags[:-1], "zero", "--epochs", "0", cwd=tmp_path), "--epochs", ">= 1, got 0")
    assert not os.path.exists(os.path.join(out, "zero"))
    make_image_tree(str(tmp_path / "one" / "ds"), classes=1, per_class=7)
    one_line_error(run("mu", "--data", str(tmp_path / "one"), "--dataset", "ds", "--imgEXT", "png", "--pretrained",
                       "none", "--out", out, cwd=tmp_path), "1 class", "at least 2")


@pytest.mark.slow
def test_a_last_training_batch_of_one_image_trains_at_32_px(image_tree, tmp_path):
    """32 training images in batches of 31 at --image-size 32: the last batch, of one image, would give BatchNorm
    one value per channel in layer4 (1 x 1); it joins the batch before it, and the epoch trains in one step."""
    done = run("mb", *small_run("mb", image_tree, str(tmp_path), "-b", "31", epochs=1, run_name="single"),
               cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert [m["epoch"] for m in metrics(str(tmp_path / "single"))] == [1]
    # stderr is no terminal here: no progress bar, the epoch's line alone
    assert "it/s" not in done.stderr and "epoch 1/1:" not in done.stderr and "epoch 1/1  loss" in done.stdout
