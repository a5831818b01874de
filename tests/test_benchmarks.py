"""The GPU benchmarks' code (``benchmarks/run.py --gpu``) runs: here on the CPU at toy sizes, so that a session lent
a GPU for a few minutes never finds it broken. Its figures are not checked (benchmarks are not tests); its own
assertions are: the N-band uint16 batches kept on the device and pinned equal the CPU's, and standardise alike."""
import importlib.util
import math
import os

import pytest
import torch

from conftest import REPO


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
