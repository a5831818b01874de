"""The memories (docs/method.md sections 5, 6) against the reference implementation's values and their formulas."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib import snca_loss
from lib.losses.snca import snca
from lib.memories.bank import MemoryBank
from lib.memories.key_encoder import KeyEncoder
from lib.training.schedules import memory_momentum, step_lr
from models import EmbeddingNet

from conftest import float32_error_bound

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def against(memory, features, indices, temperature, margin=0.0):
    """L_SNCA of a batch against the bank's rows as the loop takes it (``margin`` in logits, as the reference)."""
    return snca(features, memory.labels[indices], indices, *memory.rows(), temperature, margin * temperature)


def fixture_memory(key, name="reference_snca.npz"):
    z = np.load(os.path.join(FIXTURES, name))
    memory = MemoryBank(z["labels"], z["features"].shape[1])
    memory.memory.copy_(torch.tensor(z[key]))
    return memory, z


def test_init_is_uniform_in_the_reference_range():
    memory = MemoryBank(torch.arange(5000) % 7, 128)
    bound = math.sqrt(3 / 128)
    assert memory.memory.shape == (5000, 128) and memory.memory.abs().max() <= bound
    assert memory.memory.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # U(-a, a) has std a/sqrt(3)


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_memory_bank_update_equals_reference(margin):
    memory, z = fixture_memory(f"m{margin}_memory_before")
    indices, features = torch.tensor(z["indices"]), torch.tensor(z["features"])
    memory.update(indices, features, momentum=0.5)
    assert np.abs(memory.memory.numpy() - z[f"m{margin}_memory_after_mb"]).max() <= 2 * update_error(features.shape[1])


def update_error(dim):
    """Bound on an entry's float32 error in normalise(a m + (1 - a) f) for unit m, f (entries <= 1): two
    roundings in the blend, gamma_dim in the squared norm (halved by the square root), the root and the division:
    below (dim + 4) u. Two float32 programs of the formula (ours, the reference's) differ by at most twice that."""
    return (dim + 4) * 2.0**-24


@pytest.mark.parametrize("momentum", [0.8, 0.9])
def test_memory_bank_update_at_the_later_momenta_equals_reference(momentum):
    # At 0.5 the update is symmetric in a and 1 - a; at 0.8 and 0.9 swapping them moves rows by ~0.3.
    memory, z = fixture_memory(f"m{momentum}_memory_before", "reference_memory_momentum.npz")
    indices, features = torch.tensor(z["indices"]), torch.tensor(z["features"])
    loss = against(memory, features, indices, float(z["temperature"]))
    # Both losses float32 from the same inputs: each within the float32 bound of the float64 value.
    loss_bound, _ = float32_error_bound(len(indices), features.shape[1], float(z["temperature"]), len(memory.labels))
    assert abs(loss.item() - float(z[f"m{momentum}_loss"])) <= 2 * loss_bound * max(1, loss.item())
    memory.update(indices, features, momentum=momentum)
    assert np.abs(memory.memory.numpy() - z[f"m{momentum}_memory_after"]).max() <= 2 * update_error(features.shape[1])


def test_memory_bank_update_equals_formula():
    memory = MemoryBank(torch.arange(50) % 3, 8)
    before = memory.memory.clone()
    indices, features = torch.tensor([4, 9, 0]), F.normalize(torch.randn(3, 8), dim=1)
    memory.update(indices, features, momentum=0.8)
    want = before.clone()
    for row, i in enumerate(indices):
        blended = 0.8 * before[i] + 0.2 * features[row]
        want[i] = blended / blended.norm()
    # the same float32 formula, its norm summed in another order: a few u (6e-8) of unit rows, under assert_close's
    # float32 defaults (rtol 1.3e-6, atol 1e-5)
    torch.testing.assert_close(memory.memory, want)


def test_momentum_update_replaces_rows_as_reference():
    memory, z = fixture_memory("mu_memory_before")
    memory.update(torch.tensor(z["indices"]), torch.tensor(z["key_features"]), momentum=0.0)
    assert np.abs(memory.memory.numpy() - z["mu_memory_after"]).max() <= 2 * update_error(z["key_features"].shape[1])


def test_mu_loss_equals_reference():
    memory, z = fixture_memory("mu_memory_before")
    temperature = float(z["temperature"])
    features = torch.tensor(z["features"], requires_grad=True)
    loss = against(memory, features, torch.tensor(z["indices"]), temperature)
    loss.backward()
    # Both float32 from the same inputs (the authors' and ours): each within the float32 bound of the float64 value.
    loss_bound, grad_bound = float32_error_bound(len(z["indices"]), features.shape[1], temperature, len(memory.labels))
    assert abs(loss.item() - float(z["mu_loss"])) <= 2 * loss_bound * max(1, loss.item())
    assert np.abs(features.grad.numpy() - z["mu_grad_features"]).max() <= 2 * grad_bound


def test_no_gradient_reaches_the_memory():
    memory = MemoryBank(torch.arange(20) % 4, 8)
    features = F.normalize(torch.randn(5, 8), dim=1).requires_grad_(True)
    against(memory, features, torch.arange(5), 0.05).backward()
    assert features.grad is not None and memory.memory.grad is None
    assert not any(True for _ in memory.parameters())


def test_key_encoder_moves_towards_the_network_by_ema():
    torch.manual_seed(0)
    model = EmbeddingNet("resnet18", dim=8, num_classes=3)
    keys = KeyEncoder(model)
    assert all(torch.equal(k, q) for k, q in zip(keys.encoder.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in keys.encoder.parameters()]
    stats = [b.clone() for b in keys.encoder.buffers()]
    keys.update(model, momentum=0.999)
    for k, b, q in zip(keys.encoder.parameters(), before, model.parameters()):
        torch.testing.assert_close(k, 0.999 * b + 0.001 * q)
    assert all(torch.equal(a, b) for a, b in zip(keys.encoder.buffers(), stats))  # BN statistics: not averaged
    assert not any(p.requires_grad for p in keys.encoder.parameters())


def test_key_encoder_forward_uses_batch_statistics_and_no_gradient():
    model = EmbeddingNet("resnet18", dim=8, num_classes=3)
    keys = KeyEncoder(model)
    model.eval()
    running = keys.encoder.trunk.bn1.running_mean.clone()
    embedding, _ = keys(torch.randn(4, 3, 32, 32))
    assert not embedding.requires_grad
    assert not torch.equal(keys.encoder.trunk.bn1.running_mean, running)  # train-mode BN updated its statistics


def test_memory_momentum_schedule():
    assert [memory_momentum(e) for e in (0, 79, 80, 119, 120, 129)] == [0.5, 0.5, 0.8, 0.8, 0.9, 0.9]


def test_step_lr_equals_torch_steplr():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.5)
    for epoch in range(130):
        # float64 products of at most 5 factors, in another order: a few ulps (2e-16 each)
        assert step_lr(epoch, 0.1, 30, 0.5) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_forward_switches_to_the_chunked_form_with_the_same_value_and_gradient(monkeypatch):
    import lib.losses.snca

    g = torch.Generator().manual_seed(1)
    memory = MemoryBank(torch.randint(0, 4, (300,), generator=g), 16)
    features = F.normalize(torch.randn(12, 16, generator=g), dim=1)
    indices = torch.randperm(300, generator=g)[:12]
    results = []
    for limit in (10**9, 0):  # plain, then chunked
        monkeypatch.setattr(lib.losses.snca, "PLAIN_MAX_ELEMENTS", limit)
        x = features.clone().requires_grad_(True)
        loss = against(memory, x, indices, 0.05, margin=2.0)
        loss.backward()
        results.append((loss.detach(), x.grad))
    want = snca_loss(features @ memory.memory.T / 0.05, indices, memory.labels, margin=2.0)
    torch.testing.assert_close(results[0][0], want)
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_loss_stays_float32_under_autocast():
    memory = MemoryBank(torch.arange(200) % 5, 16)
    memory.update(torch.arange(200), F.normalize(torch.randn(200, 16), dim=1), momentum=0.0)
    features = F.normalize(torch.randn(8, 16), dim=1)
    want = against(memory, features, torch.arange(8), 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = against(memory, features, torch.arange(8), 0.05)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)  # bf16 similarities would be off by ~0.08 in logits


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_memory_updates_in_float32_and_stores_rounded_rows(dtype):
    memory = MemoryBank(torch.arange(30) % 3, 8, dtype=dtype)
    assert memory.memory.dtype == dtype
    before = memory.memory.clone()
    features = F.normalize(torch.randn(4, 8), dim=1)
    indices = [1, 5, 7, 20]
    memory.update(torch.tensor(indices), features, momentum=0.8)
    for row, i in enumerate(indices):  # the formula in float64, one row at a time
        blended = [0.8 * float(m) + 0.2 * float(f) for m, f in zip(before[i], features[row])]
        norm = math.sqrt(sum(x * x for x in blended))
        exact = torch.tensor([x / norm for x in blended], dtype=torch.float64)
        # Stored: the float32 result (within update_error of exact) rounded to the storage type (half an ulp,
        # eps / 2 relative). Blending in the storage type would be off by several of its ulps.
        error = (memory.memory[i].double() - exact).abs()
        assert (error <= torch.finfo(dtype).eps / 2 * exact.abs() + 2 * update_error(8)).all(), (i, error)
    assert torch.equal(memory.memory[[0, 2, 29]], before[[0, 2, 29]])
