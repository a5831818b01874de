"""Stopping on SIGINT / SIGTERM (the step finishes, last.pt holds the position) or dying by SIGKILL: the
resumed run equals a run that never stopped."""
import os
import signal

import pytest
import torch
from old_loop_call import train_one_epoch
from test_entry_points import SCRIPTS, assert_same, metrics, small_run

from datasets import TensorBatches
from lib.cli.args import get_args_parser
from lib.memories.bank import MemoryBank
from lib.memories.key_encoder import KeyEncoder
from lib.training.device import resolve_precision
from lib.training.interrupt import TrainingInterrupted
from lib.training.utils import rng_state, seed_everything, set_rng_state
from models import EmbeddingNet

from conftest import run_script, start_script

CPU = torch.device("cpu")


class StopAfter:
    """Turns true after ``n`` looks, as a StopRequest does once a signal came."""

    def __init__(self, n):
        self.n = n

    def __bool__(self):
        self.n -= 1
        return self.n < 0


def epoch_state(method, stop_after=None):
    """One MU/MB epoch on generated data; with ``stop_after``, stopped after that many steps and continued."""
    args = get_args_parser(method).parse_args([])
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(20) % 4
    model = EmbeddingNet("resnet18", 16, 4)
    key_encoder = KeyEncoder(model) if method == "mu" else None
    memory = MemoryBank(labels, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    precision = resolve_precision(CPU, "none")
    generator = torch.Generator()
    batches = TensorBatches(images, labels, 3, CPU, shuffle=True, generator=generator)

    def run(position=None, stop=False):
        seed_everything(7)
        generator.manual_seed(7)
        if position is not None:
            set_rng_state(saved_rng)
        return train_one_epoch(model, memory, key_encoder, batches, optimizer, args, 0.5, precision,
                               position=position, stop=stop)

    if stop_after is None:
        losses = run()
    else:
        try:
            run(stop=StopAfter(stop_after))
            raise AssertionError("the epoch was not stopped")
        except TrainingInterrupted as where:
            assert where.step == stop_after + 1 and where.seen == 3 * (stop_after + 1)
            position = (where.step, where.totals, where.seen)
            saved_rng = rng_state()
        losses = run(position=position)
    return losses, model.state_dict(), memory.state_dict(), optimizer.state_dict()


@pytest.mark.slow
def test_an_epoch_stopped_and_continued_equals_an_epoch_that_never_stopped():
    for method in ("mb", "mu"):
        straight = epoch_state(method)
        for stop_after in (0, 3):
            resumed = epoch_state(method, stop_after)
            assert resumed[0] == straight[0]
            for a, b, name in zip(straight[1:], resumed[1:], ("model", "memory", "optimizer")):
                assert_same(a, b, f"{method} {name}")


@pytest.fixture(scope="module")
def straight_run(image_tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs"))
    done = run_script(SCRIPTS["mb"], *small_run("mb", image_tree, out, "-b", "4", epochs=4, run_name="straight"))
    assert done.returncode == 0, done.stderr
    return metrics(os.path.join(out, "straight"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stopped_or_killed_run_resumes_and_equals_a_straight_run(sig, straight_run, image_tree, tmp_path):
    """SIGINT / SIGTERM: the step finishes, last.pt holds the position inside the epoch, exit 128 + signal with
    the way to continue. SIGKILL (no chance to save): --resume auto continues from the last completed epoch."""
    out = str(tmp_path / "runs")
    flags = small_run("mb", image_tree, out, "-b", "4", epochs=4, run_name="stopped")
    process = start_script(SCRIPTS["mb"], *flags, cwd=tmp_path)  # its own process, 2 threads
    process.wait_for_line("epoch 1/4")
    process.send_signal(sig)
    stopped = process.wait()
    folder = os.path.join(out, "stopped")
    state = torch.load(os.path.join(folder, "checkpoints", "last.pt"), weights_only=True)
    assert state["epoch"] >= 1  # epoch 1 is complete; the stop came during epoch 2 (at a step or its end)
    if sig == signal.SIGKILL:
        assert stopped.returncode == -signal.SIGKILL
        resume = "auto"
    else:
        assert stopped.returncode == 128 + sig, stopped.stderr
        stderr = stopped.stderr
        assert f"stopped by {sig.name}" in stderr and "--resume" in stderr and "Traceback" not in stderr
        resume = folder
    resumed = run_script(SCRIPTS["mb"], *flags, "--resume", resume, cwd=tmp_path)  # the same 2 threads
    assert resumed.returncode == 0, resumed.stderr
    keys = ("loss", "loss_snca", "loss_ce", "knn_acc_bank", "knn_acc_extracted")
    assert [[m[k] for k in keys] for m in straight_run] == [[m[k] for k in keys] for m in metrics(folder)]
