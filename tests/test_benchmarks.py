"""The benchmarks' code runs, so that it cannot break unnoticed: the GPU benchmarks (``benchmarks/run.py --gpu``)
here on the CPU at toy sizes, since a session lent a GPU has minutes; and the authors' process that the whole-process
benchmark times. Figures are not checked (benchmarks are not tests); the GPU benchmarks' own assertions are: the
N-band uint16 batches kept on the device and pinned equal the CPU's, and standardise alike."""
import importlib.util
import math
import os

import pytest
import torch

from datasets import build_splits

from conftest import REPO, run_script


def load_benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))  # as when run: its folder first (reference.py)
    spec = importlib.util.spec_from_file_location("benchmarks_run", os.path.join(REPO, "benchmarks", "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains ResNet-18 steps
def test_the_gpu_benchmarks_run_at_toy_sizes(monkeypatch):
    run = load_benchmarks(monkeypatch)
    run.bench_gpu(torch.device("cpu"), run.SMOKE)
    rows = {name: ours for name, ours, *_ in run.ROWS}
    expected = ["batched augmentation", "kNN K=10, 12 x 40", "SNCA loss fwd+bwd", "N-band training",
                "training, resnet18 MB", "training, resnet18 MU", "NWPU-sized epoch (40 + 12 generated images), "
                "resnet18 MB", "NWPU-sized epoch (40 + 12 generated images), resnet18 MU"]
    for start in expected:
        assert any(name.startswith(start) for name in rows), start
    timings = [float(ours.split()[0].replace(",", "")) for name, ours in rows.items() if "memory" not in name]
    assert all(math.isfinite(t) and t > 0 for t in timings)
    assert "batches = the CPU's bit for bit" in next(note for name, *_, note in run.ROWS
                                                     if name.startswith("N-band training"))


@pytest.mark.slow  # trains ResNet-18 for two epochs
@pytest.mark.parametrize("memory", ["mb", "mu"])
def test_the_authors_process_runs_for_the_whole_process_benchmark(memory, image_tree, tmp_path):
    """``benchmarks/reference_main.py``, the authors' process that ``run.py --only whole`` times against ours: it
    trains, validates every epoch and saves its checkpoints as theirs does."""
    script = os.path.join(REPO, "benchmarks", "reference_main.py")
    done = run_script(script, "--memory", memory, "--data", image_tree, "--dataset", "tiny", "--imgEXT", "png",
                      "--image-size", "32", "-b", "16", "--lr", "0.01", "--epochs", "2", "--num_workers", "0",
                      "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    epochs = [line.split(" validation kNN ") for line in done.stdout.splitlines()]
    assert [epoch for epoch, _ in epochs] == ["epoch 1/2", "epoch 2/2"]
    accuracies = [float(accuracy.rstrip("%")) for _, accuracy in epochs]
    (folder,) = os.listdir(tmp_path)
    checkpoints = os.path.join(tmp_path, folder, "checkpoints")
    checkpoint = torch.load(os.path.join(checkpoints, "checkpoint.pth.tar"), weights_only=True)
    train = build_splits(os.path.join(image_tree, "tiny"), "png")["train"]
    assert checkpoint["epoch"] == 2 and checkpoint["memory"].shape == (len(train), 128)
    assert checkpoint["best_acc"] == pytest.approx(max(accuracies) / 100, abs=5e-5)  # printed to 0.01 %
    # their best copy is written when an epoch beats the best so far, which starts at 0
    assert os.path.exists(os.path.join(checkpoints, "model_best.pth.tar")) == (max(accuracies) > 0)


@pytest.mark.slow  # trains ResNet-18 for one epoch under the profiler
def test_the_time_split_finds_every_part_of_a_run(image_tree, monkeypatch):
    """``benchmarks/where_time_goes.py`` on the tiny dataset: every part it names is a function the run calls (a part
    whose function moved would stop it), each takes some time, and the parts fit in the profile's total."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
    spec = importlib.util.spec_from_file_location("where", os.path.join(REPO, "benchmarks", "where_time_goes.py"))
    where = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(where)
    flags = ("--image-size", "32", "-b", "16", "--lr", "0.01", "--epochs", "2", "--num_workers", "0")
    times, total = where.profile_run(image_tree, "tiny", "png", flags)
    assert len(times) == sum(1 for part, *_ in where.PARTS if part)
    assert all(seconds > 0 for seconds in times.values()), times
    top_level = sum(seconds for part, seconds in times.items() if not part.startswith(" "))
    assert top_level <= total
