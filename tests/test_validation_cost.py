"""MB's diagnostic kNN against re-extracted training embeddings is computed every --knn-extracted-every epochs, and
computing it or not changes nothing of the training: losses, weights, the memory and the method's own kNN."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_script

MB = os.path.join(REPO, "train_SNCA_CE", "main.py")


def train(data, out, name, *extra):
    flags = ["--data", data, "--dataset", "tiny", "--imgEXT", "png", "--image-size", "32", "-b", "16",
             "--num_workers", "0", "--pretrained", "none", "--epochs", "3", "--lr", "0.01", "--out", out,
             "--run-name", name, *extra]
    done = run_script(MB, *flags)
    assert done.returncode == 0, done.stderr
    folder = os.path.join(out, name)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    return metrics, torch.load(os.path.join(folder, "checkpoints", "last.pt"), weights_only=True)


@pytest.mark.slow
def test_the_diagnostic_reference_is_computed_every_n_epochs_and_changes_no_training_value(image_tree, tmp_path):
    out = str(tmp_path / "runs")
    every_epoch, every_epoch_state = train(image_tree, out, "every", "--knn-extracted-every", "1")
    every_second, _ = train(image_tree, out, "second", "--knn-extracted-every", "2")
    never, never_state = train(image_tree, out, "never", "--knn-extracted-every", "0")

    assert all(m["knn_acc_extracted"] is not None for m in every_epoch)
    assert [m["knn_acc_extracted"] is not None for m in every_second] == [False, True, False]
    assert all(m["knn_acc_extracted"] is None for m in never)
    # Start-up (the command to the first training step) is recorded once, in the first epoch this process trained.
    assert every_epoch[0]["startup_s"] > 0 and all("startup_s" not in m for m in every_epoch[1:])
    assert every_second[1]["knn_acc_extracted"] == every_epoch[1]["knn_acc_extracted"]
    # The same process layout and threads: training must not see the extra inference passes, to the bit.
    for key in ("loss", "loss_snca", "loss_ce", "knn_acc", "knn_acc_bank", "best_knn_acc"):
        assert [m[key] for m in every_epoch] == [m[key] for m in every_second] == [m[key] for m in never], key
    for part in ("model", "memory", "optimizer"):
        flat_a, flat_b = (torch.utils._pytree.tree_leaves(s[part]) for s in (every_epoch_state, never_state))
        assert len(flat_a) == len(flat_b)
        assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(flat_a, flat_b)), part


def test_what_training_does_not_need_is_not_imported_before_it():
    """matplotlib (the learning curve), TensorBoard (the first logged epoch) and scikit-learn (evaluation) are
    imported when first used, not while the program starts."""
    probe = ("import sys; import lib.training.program; "
             "print(sorted({'matplotlib', 'torch.utils.tensorboard', 'sklearn'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
