"""XBM, the cross-batch memory (lib/memories/cross_batch.py): its SNCA loss against a float64 double loop written
from the definition, its FIFO queue, and the MB entry point training, resuming and running under torchrun with it."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from test_ddp import flags, last_state, launch
from test_entry_points import assert_same, metrics, run, small_run

from lib.losses.snca import snca
from lib.memories.cross_batch import CrossBatchMemory

from conftest import float32_error_bound, untimed

T = 0.05  # the paper's temperature


def queue_loss(memory, features, indices, labels, margin=0.0):
    """L_SNCA of a batch against the queue's rows, as the training loop takes it."""
    return snca(features, labels, indices, *memory.rows(), T, margin)


XBM = ("--memory", "xbm", "--queue-size", "24")  # the tiny dataset writes 32 embeddings an epoch: the queue wraps


def filled_queue(generator, size=10, filled=8, dim=8, num_images=12):
    """A queue of ``size`` slots of which the first ``filled`` hold unit embeddings of random images."""
    memory = CrossBatchMemory(torch.arange(num_images) % 3, dim, queue_size=size)
    indices = torch.randint(0, num_images, (filled,), generator=generator)
    memory.step(None, indices, F.normalize(torch.randn(filled, dim, generator=generator), dim=1))
    return memory


def double_loop(features, indices, labels, memory, temperature, margin):
    """-(1/B) sum_i log(P_i e^-m / (Z_i - P_i + P_i e^-m)) over the images with a positive, in float64: P_i, Z_i
    sum exp(f_i . q_j / T) over the filled slots j that do not hold image i itself (P_i: of its class)."""
    total = features.new_zeros(())
    for i in range(len(features)):
        p = z = features.new_zeros(())
        for j in range(len(memory.queue)):
            if memory.queue_indices[j] < 0 or memory.queue_indices[j] == indices[i]:
                continue
            term = torch.exp(features[i] @ memory.queue[j].double() / temperature)
            z = z + term
            if memory.queue_labels[j] == labels[i]:
                p = p + term
        if p > 0:
            shrunk = p * math.exp(-margin / temperature)
            total = total + torch.log(shrunk / (z - p + shrunk))
    return -total / len(features)


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_loss_and_gradient_equal_the_double_loop(margin):
    g = torch.Generator().manual_seed(0)
    memory = filled_queue(g)
    features = F.normalize(torch.randn(6, 8, generator=g), dim=1)                       # float32, as trained
    indices = torch.cat([memory.queue_indices[:3], torch.tensor([11, 10, 9])])  # three have entries in the queue
    labels = memory.labels[indices]
    x32, x64 = features.clone().requires_grad_(True), features.double().requires_grad_(True)
    got = queue_loss(memory, x32, indices, labels, margin)
    want = double_loop(x64, indices, labels, memory, T, margin)
    got.backward()
    want.backward()
    # float32 logits of size 1/T = 20 round by ~1e-6, so do the loss (~10) and its gradient (~4) relatively; the
    # margin's log(Z - P + P e^-m) cancels where P ~ Z and can multiply that by up to e^(m/T) = 403: 1e-4 relative
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), rel=1e-4)
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-4 * x64.grad.abs().max().item())


def test_only_filled_slots_count_and_an_empty_queue_gives_zero_without_nan():
    g = torch.Generator().manual_seed(1)
    features = F.normalize(torch.randn(4, 8, generator=g), dim=1).requires_grad_(True)
    empty = CrossBatchMemory(torch.arange(12) % 3, 8, queue_size=10)
    loss = queue_loss(empty, features, torch.arange(4), torch.arange(4) % 3, margin=0.3)
    loss.backward()
    assert loss.item() == 0 and torch.equal(features.grad, torch.zeros_like(features))
    # an image whose only same-class entries are its own gets no term; the divisor stays B = 2
    memory = CrossBatchMemory(torch.tensor([0, 1, 0]), 8, queue_size=10)
    memory.step(None, torch.tensor([0, 1]), F.normalize(torch.randn(2, 8, generator=g), dim=1))
    x = features[:2].detach()
    alone = queue_loss(memory, x[:1], torch.tensor([0]), torch.tensor([0]))                  # its own entry only
    both = queue_loss(memory, x, torch.tensor([0, 2]), torch.tensor([0, 0]))                  # image 2 sees image 0
    # in float64 from the same float32 values; the float32 loss is within conftest's float32 bound of it
    want = -torch.log_softmax(x[1].double() @ memory.queue[:2].double().T / T, dim=0)[0] / 2
    bound, _ = float32_error_bound(2, 8, T, 2)
    assert alone.item() == 0 and abs(both.item() - want.item()) <= bound * max(1, want.item())


def test_queue_is_fifo_with_labels_and_indices():
    memory = CrossBatchMemory(torch.arange(20) % 4, 2, queue_size=5)
    written = []
    for start, size in ((0, 3), (3, 3), (6, 7)):  # the last batch is larger than the queue: its last 5 stay
        indices = torch.arange(start, start + size)
        writes = torch.stack([indices.float(), -indices.float()], dim=1)              # (b, 2)
        memory.step(None, indices, writes)
        written += indices.tolist()
    newest = written[-5:]
    order = [(int(memory.head) + k) % 5 for k in range(5)]                             # oldest slot first
    assert memory.queue_indices[order].tolist() == newest
    assert memory.queue[order, 0].tolist() == [float(i) for i in newest]
    assert memory.queue_labels[order].tolist() == [i % 4 for i in newest]
    assert {"queue", "queue_labels", "queue_indices", "head"} <= set(memory.state_dict())


def test_mb_entry_point_trains_validates_and_resumes_exactly_with_xbm(image_tree, tmp_path):
    """2 epochs + 1 resumed = 3 straight, bitwise: metrics, weights and the queue (its labels, indices, head)."""
    out = str(tmp_path / "runs")
    straight = run("mb", *small_run("mb", image_tree, out, *XBM, epochs=3, run_name="straight"), cwd=tmp_path)
    first = run("mb", *small_run("mb", image_tree, out, *XBM, epochs=2, run_name="split"), cwd=tmp_path)
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    second = run("mb", *small_run("mb", image_tree, out, *XBM, "--resume", os.path.join(out, "split"), epochs=3),
                 cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    lines = metrics(os.path.join(out, "straight"))
    assert untimed(lines) == untimed(metrics(os.path.join(out, "split")))
    for m in lines:  # validated against re-extracted embeddings: the queue is not one row per training image
        assert m["loss_snca"] > 0 and m["knn_acc"] == m["knn_acc_extracted"] and m["knn_acc_bank"] is None
    a, b = (torch.load(os.path.join(out, name, "checkpoints", "last.pt"), weights_only=True)
            for name in ("straight", "split"))
    for part in ("model", "memory", "optimizer"):
        assert_same(a[part], b[part], part)
    assert a["args"]["memory"] == "xbm" and a["memory"]["queue"].shape == (24, 128)
    assert (a["memory"]["queue_indices"] >= 0).all()  # 96 writes: every slot filled


def test_xbm_is_offered_by_the_mb_entry_point_only(tmp_path):
    assert "--queue-size" in run("mb", "--help", cwd=tmp_path).stdout
    refused = run("mu", "--memory", "xbm", cwd=tmp_path)
    assert refused.returncode == 2 and "invalid choice: 'xbm'" in refused.stderr


def test_two_ranks_hold_the_same_queue_and_train_as_one_process(image_tree, tmp_path):
    """Under torchrun every rank enqueues the whole global batch: the run checks every epoch that the queue's bits
    are the same on both ranks (it stops otherwise); the result follows one process doing the same steps."""
    one = launch("mb", *flags(image_tree, str(tmp_path / "one"), *XBM, run_name="run"), ranks=1, cwd=tmp_path)
    two = launch("mb", *flags(image_tree, str(tmp_path / "two"), *XBM, "--sync-bn", run_name="run"), cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = (last_state(str(tmp_path / name / "run")) for name in ("one", "two"))
    assert b["world_size"] == 2 and torch.equal(a["memory"]["queue_indices"], b["memory"]["queue_indices"])
    assert torch.equal(a["memory"]["head"], b["memory"]["head"])
    # two float32 steps in another summation order (test_ddp.py: the memory rows agree to 5e-5)
    torch.testing.assert_close(b["memory"]["queue"], a["memory"]["queue"], rtol=0, atol=5e-5)


@pytest.mark.slow
def test_two_ranks_resume_the_queue_exactly(image_tree, tmp_path):
    """Two epochs on two ranks, against one epoch on two ranks resumed for a second on two ranks: the same process
    layout, so the queue, its labels, indices and head, the weights and the logged values are equal bit for bit."""
    out = str(tmp_path / "runs")
    straight = launch("mb", *flags(image_tree, out, *XBM, "--sync-bn", run_name="straight"), cwd=tmp_path)
    first = launch("mb", *flags(image_tree, out, *XBM, "--sync-bn", epochs=1, run_name="split"), cwd=tmp_path)
    resumed = launch("mb", *flags(image_tree, out, *XBM, "--sync-bn", "--resume", os.path.join(out, "split"),
                                  run_name="split"), cwd=tmp_path)
    assert straight.returncode == first.returncode == resumed.returncode == 0, straight.stderr + resumed.stderr
    a, b = (last_state(os.path.join(out, name)) for name in ("straight", "split"))
    assert a["epoch"] == b["epoch"] == 2 and a["world_size"] == b["world_size"] == 2
    for part in ("memory", "model"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert untimed(metrics(os.path.join(out, "straight"))) == untimed(metrics(os.path.join(out, "split")))
