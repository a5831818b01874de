"""Run folders written by the code before lib/ became packages (commit ``BEFORE_PACKAGES``, taken from this
repository's git history) still resume bit for bit and still evaluate: the old code trains a run for one epoch and
another straight for two; today's code resumes the first to two epochs and must reach the second's state exactly,
and scripts/evaluate.py must read the old
folder."""
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch
from test_entry_points import assert_same, metrics, small_run

from conftest import REPO

BEFORE_PACKAGES = "2b23a66fceff5ef906680888b96bfef494574464"  # the last commit with the flat lib/ and MomentumUpdate
ENTRY = {"mb": "train_SNCA_CE", "mu": "train_SNCA_CE_MC"}


@pytest.fixture(scope="module")
def old_code(tmp_path_factory):
    """The repository as it was at ``BEFORE_PACKAGES``, unpacked from git (a clone with its history has it)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", BEFORE_PACKAGES], capture_output=True)
    assert archive.returncode == 0, (f"this test needs commit {BEFORE_PACKAGES[:7]} of the repository's history (a "
                                     f"shallow clone lacks it: git fetch --unshallow): {archive.stderr.decode()}")
    folder = tmp_path_factory.mktemp("old_code")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return str(folder)


def train(code, method, *flags):
    """An entry point of ``code`` in a process of its own (the old and today's ``lib`` cannot share one), 2 threads."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, os.path.join(code, ENTRY[method], "main.py"), *flags], env=env,
                          capture_output=True, text=True, cwd=code)
    assert done.returncode == 0, done.stderr
    return done


def checkpoint(folder):
    return torch.load(os.path.join(folder, "checkpoints", "last.pt"), weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mb", "mu"])
def test_an_old_run_resumes_bit_for_bit_and_evaluates(method, old_code, image_tree, tmp_path):
    out = str(tmp_path)
    extra = ("--cache", "memory", "--seed", "5")
    train(old_code, method, *small_run(method, image_tree, out, *extra, epochs=2, run_name="straight"))
    train(old_code, method, *small_run(method, image_tree, out, *extra, epochs=1, run_name="old"))
    old = os.path.join(out, "old")
    if method == "mu":  # recorded under the key-encoder momentum's earlier name
        assert "ema_momentum" in checkpoint(old)["args"] and "key_momentum" not in checkpoint(old)["args"]

    done = train(REPO, method, "--resume", old, "--epochs", "2", "--out", out, "--run-name", "old")
    assert "epoch 2/2" in done.stdout and "epoch 1/2" not in done.stdout
    straight, resumed = checkpoint(os.path.join(out, "straight")), checkpoint(old)
    for part in ("model", "memory", "optimizer", "epoch", "best_acc"):
        assert_same(resumed[part], straight[part], part)
    losses = [{k: v for k, v in m.items() if k.startswith(("loss", "knn"))} for m in metrics(old)]
    assert losses == [{k: v for k, v in m.items() if k.startswith(("loss", "knn"))}
                      for m in metrics(os.path.join(out, "straight"))]
    if method == "mu":
        assert resumed["args"]["key_momentum"] == 0.999

    # the old folder evaluates (its weights are bit for bit the straight run's, checked above)
    evaluated = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), old, "--device", "cpu",
                                "--num_workers", "0", "--tsne-points", "12"],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert evaluated.returncode == 0, evaluated.stderr
    with open(os.path.join(old, "eval", "test", "results.json")) as f:
        results = json.load(f)
    assert results["num_queries"] == 4 * 3 and 0 <= results["knn"]["10"]["overall"] <= 1  # 4 classes x 3 test images
