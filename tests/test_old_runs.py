"""Run folders written by the code before lib/ became packages (commit ``BEFORE_PACKAGES``, taken from this
repository's git history) still resume bit for bit and still evaluate: the old code trains a run for one epoch and
another straight for two; today's code resumes the first to two epochs and must reach the second's state exactly,
and scripts/evaluate.py must read the old
MU folder."""
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch
from test_entry_points import assert_same, metrics, small_run

from conftest import REPO, run_script

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


def start(code, method, *flags):
    """An entry point of ``code`` in a process of its own (the old and today's ``lib`` cannot share one), on one
    thread, so that two run side by side on two cores and every run sums in the same order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ""}
    return subprocess.Popen([sys.executable, os.path.join(code, ENTRY[method], "main.py"), *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=code)


def finish(*processes):
    outputs = [process.communicate() for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    return outputs[-1][0]


def checkpoint(folder):
    return torch.load(os.path.join(folder, "checkpoints", "last.pt"), weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mb", "mu"])
def test_an_old_run_resumes_bit_for_bit_and_evaluates(method, old_code, image_tree, tmp_path):
    out = str(tmp_path)
    extra = ("--cache", "memory", "--seed", "5")
    finish(start(old_code, method, *small_run(method, image_tree, out, *extra, epochs=2, run_name="straight")),
           start(old_code, method, *small_run(method, image_tree, out, *extra, epochs=1, run_name="old")))
    old = os.path.join(out, "old")
    if method == "mu":  # recorded under the key-encoder momentum's earlier name
        assert "ema_momentum" in checkpoint(old)["args"] and "key_momentum" not in checkpoint(old)["args"]

    done = finish(start(REPO, method, "--resume", old, "--epochs", "2", "--out", out, "--run-name", "old"))
    assert "epoch 2/2" in done and "epoch 1/2" not in done
    straight, resumed = checkpoint(os.path.join(out, "straight")), checkpoint(old)
    for part in ("model", "memory", "optimizer", "epoch", "best_acc"):
        assert_same(resumed[part], straight[part], part)
    losses = [{k: v for k, v in m.items() if k.startswith(("loss", "knn"))} for m in metrics(old)]
    assert losses == [{k: v for k, v in m.items() if k.startswith(("loss", "knn"))}
                      for m in metrics(os.path.join(out, "straight"))]
    if method == "mu":
        assert resumed["args"]["key_momentum"] == 0.999

    if method == "mu":  # the old folder evaluates (MU's, whose recorded flags include the renamed one)
        evaluated = run_script(os.path.join(REPO, "scripts", "evaluate.py"), old, "--device", "cpu", "--num_workers",
                               "0", "--tsne-points", "12")
        assert evaluated.returncode == 0, evaluated.stderr
        with open(os.path.join(old, "eval", "test", "results.json")) as f:
            results = json.load(f)
        assert results["num_queries"] == 4 * 3 and 0 <= results["knn"]["10"]["overall"] <= 1  # 4 classes x 3 images
