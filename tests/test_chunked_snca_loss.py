"""lib.chunked_snca_loss (the streamed form of lib.losses.snca) against the reference implementation's values,
the plain form and gradcheck (docs/method.md section 4), and a check that no B x N tensor is ever created."""
import os

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lib.losses.snca import DEFAULT_CHUNK_SIZE, chunked_snca_loss, snca_loss

from conftest import float32_error_bound

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def random_problem(seed, batch=12, n=80, dim=16, classes=5, dtype=torch.float64):
    """Unit features and memory; index 3 is the only member of its class and is the first batch image."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[3] = classes
    perm = torch.randperm(n, generator=g)
    indices = torch.cat([torch.tensor([3]), perm[perm != 3][: batch - 1]])
    features = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=1)
    memory = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)
    return features, memory, indices, labels


def with_cosine_one_positives(features, memory, indices, labels):
    """A same-class memory row equal to each batch feature (but the lonely one): logits of 1 / T."""
    memory = memory.clone()
    for row, i in enumerate(indices[1:].tolist(), start=1):
        others = (labels == labels[i]) & (torch.arange(len(labels)) != i)
        memory[others.nonzero().flatten()[0]] = features[row]
    return memory


def explicit_formula(logits, indices, labels, margin):
    """docs/method.md section 4 with explicit exponentials, differentiable float64 (no log-sum-exp)."""
    not_self = torch.ones_like(logits)                                        # (B, N)
    not_self[torch.arange(len(indices)), indices] = 0
    e = torch.exp(logits) * not_self                                          # (B, N)
    same = labels[indices][:, None] == labels[None, :]                        # (B, N)
    p, z = (e * same).sum(1), e.sum(1)                                        # (B,), (B,)
    p_new = p * np.exp(-margin)
    prob = p_new / (z - p + p_new)
    return -torch.log(prob[prob > 0]).sum() / len(indices)


def value_and_grad(loss_fn, features):
    x = features.detach().clone().requires_grad_(True)
    loss = loss_fn(x)
    loss.backward()
    return loss.detach(), x.grad


def plain(memory, indices, labels, temperature, margin):
    return lambda x: snca_loss(x.float() @ memory.float().T / temperature, indices, labels, margin=margin)


def plain_float64_logits(memory, indices, labels, temperature, margin):
    """snca_loss of float64 logits (it still sums in float32)."""
    return lambda x: snca_loss(x.double() @ memory.double().T / temperature, indices, labels, margin=margin)


def chunked(memory, indices, labels, temperature, margin, chunk_size=DEFAULT_CHUNK_SIZE):
    return lambda x: chunked_snca_loss(x, memory, indices, labels, temperature, margin=margin, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [64, DEFAULT_CHUNK_SIZE])
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_equals_reference_implementation(margin, chunk_size):
    z = np.load(os.path.join(FIXTURES, "reference_snca.npz"))
    temperature = float(z["temperature"])
    memory, indices, labels = (torch.tensor(z[k]) for k in (f"m{margin}_memory_before", "indices", "labels"))
    loss, grad = value_and_grad(chunked(memory, indices, labels, temperature, margin / temperature, chunk_size),
                                torch.tensor(z["features"]))
    # Two float32 computations (ours, the reference's) from the same inputs: each within the float32 bound.
    loss_bound, grad_bound = float32_error_bound(len(indices), memory.shape[1], temperature, len(labels))
    assert abs(loss.item() - float(z[f"m{margin}_loss"])) <= 2 * loss_bound * max(1, loss.item())
    assert np.abs(grad.numpy() - z[f"m{margin}_grad_features"]).max() <= 2 * grad_bound


@pytest.mark.parametrize("large_logits", [False, True])
@pytest.mark.parametrize("margin", [0.0, 4.0, 1.0])
@pytest.mark.parametrize("chunk_size", [1, 7, 79, 80, 160])  # N = 80: 1, uneven, N - 1, N, 2N
def test_float64_value_and_gradient_equal_snca_loss(chunk_size, margin, large_logits):
    features, memory, indices, labels = random_problem(int(margin) + 10 * large_logits)
    if large_logits:
        memory = with_cosine_one_positives(features, memory, indices, labels)
    temperature = 0.05
    loss, grad = value_and_grad(chunked(memory, indices, labels, temperature, margin, chunk_size), features)
    assert loss.dtype == torch.float64
    if large_logits:
        assert (features @ memory.T / temperature).max() > 19.99
    # snca_loss rounds the float64 logits to float32 (conftest's bound with no dot product, dim = 0) and works in
    # float32; its log1p form of log Z' loses ~2e-6 (relative) more to cancellation when P ~ Z and the margin is
    # large (measured), added to the bound.
    want_loss, want_grad = value_and_grad(plain_float64_logits(memory, indices, labels, temperature, margin), features)
    loss_bound, grad_bound = float32_error_bound(len(indices), 0, temperature, len(labels))
    assert abs(loss.item() - want_loss.item()) <= (loss_bound + 2e-6) * max(1, loss.item())
    # The gradient's weights exp(s - log Z') inherit that cancellation: conftest's gradient bound (3.3e-5 here) holds
    # except with large logits and margin 4, where 7.1e-5 was measured; 1e-4 of the largest component covers both.
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=max(grad_bound, 1e-4 * want_grad.abs().max().item()))
    # The explicit formula in float64: float64 tolerances.
    want_loss, want_grad = value_and_grad(
        lambda x: explicit_formula(x @ memory.T / temperature, indices, labels, margin), features)
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-12)
    assert grad[0].abs().max() == 0  # the lonely image: no positive, no loss term, no gradient


def test_float32_logits_beyond_exp_overflow():
    """T = 0.005 gives logits of 200: exp(200) overflows float32 (and the left-out self logit, also 200, must
    stay out), the max-subtracted sums must not."""
    features, memory, indices, labels = random_problem(5)
    memory = with_cosine_one_positives(features, memory, indices, labels)
    memory[indices] = features  # as in the memory bank: each image's own row near its feature
    assert (features @ memory.T / 0.005).max() > 199.99
    features, memory = features.float(), memory.float()
    loss, grad = value_and_grad(chunked(memory, indices, labels, 0.005, 2.0, 7), features)
    assert loss.dtype == torch.float32 and torch.isfinite(grad).all()
    # Against float64 arithmetic on the same float32 inputs, within the float32 bound at T = 0.005 (eps_s = 2e-4).
    want_loss, want_grad = value_and_grad(
        lambda x: explicit_formula(x @ memory.double().T / 0.005, indices, labels, 2.0), features.double())
    loss_bound, grad_bound = float32_error_bound(len(indices), memory.shape[1], 0.005, len(labels))
    assert abs(loss.item() - want_loss.item()) <= loss_bound * max(1, want_loss.item())
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=grad_bound)


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
def test_half_precision_memory_is_upcast(storage):
    features, memory, indices, labels = random_problem(6, dtype=torch.float32)
    stored = memory.to(storage)
    loss, grad = value_and_grad(chunked(stored, indices, labels, 0.05, 2.0, 7), features)
    assert loss.dtype == torch.float32
    # The stored values upcast, in float64: float32 arithmetic on them is within the float32 bound (the rows are
    # unit to the storage's rounding, 2^-8 for bfloat16: norm 1.004). Arithmetic in the storage's precision
    # would be off by ~1e-2 (bfloat16), far outside it.
    want_loss, want_grad = value_and_grad(
        lambda x: explicit_formula(x @ stored.double().T / 0.05, indices, labels, 2.0), features.double())
    norm = stored.double().norm(dim=1).max().item()
    loss_bound, grad_bound = float32_error_bound(len(indices), memory.shape[1], 0.05, len(labels), norm)
    assert abs(loss.item() - want_loss.item()) <= loss_bound * max(1, want_loss.item())
    torch.testing.assert_close(grad.double(), want_grad, rtol=0, atol=grad_bound)


def test_bfloat16_features_under_autocast_are_computed_in_float32():
    features, memory, indices, labels = random_problem(7, dtype=torch.float32)
    layer = torch.nn.Linear(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = layer(features)                                                   # (B, D) bfloat16
        loss = chunked_snca_loss(x, memory, indices, labels, 0.05, chunk_size=7)
    assert x.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # The same bfloat16 features in float64: float32 arithmetic is within the float32 bound for features of this
    # norm; a bfloat16 matmul would be off by ~1e-2, far outside it.
    want_loss, want_grad = value_and_grad(
        lambda f: explicit_formula(f @ memory.double().T / 0.05, indices, labels, 0.0), x.detach().double())
    norm = x.detach().double().norm(dim=1).max().item()
    loss_bound, grad_bound = float32_error_bound(len(indices), memory.shape[1], 0.05, len(labels), norm)
    assert abs(loss.item() - want_loss.item()) <= loss_bound * max(1, want_loss.item())
    y = x.detach().clone().requires_grad_(True)
    chunked_snca_loss(y, memory, indices, labels, 0.05, chunk_size=7).backward()
    assert y.grad.dtype == torch.bfloat16
    # the float32 gradient within the bound, then rounded to bfloat16 (relative 2^-8)
    torch.testing.assert_close(y.grad.double(), want_grad, rtol=2**-8, atol=grad_bound)


def test_gradcheck_with_margin():
    features, memory, indices, labels = random_problem(8, batch=4, n=10, dim=5, classes=2)
    x = features.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: chunked_snca_loss(f, memory, indices, labels, 0.5, 1.5, 3), (x,))


def test_no_gradient_to_memory_and_in_place_update_before_backward_is_caught():
    features, memory, indices, labels = random_problem(9)
    memory.requires_grad_(True)
    x = features.clone().requires_grad_(True)
    chunked_snca_loss(x, memory, indices, labels, 0.05, chunk_size=7).backward()
    assert memory.grad is None and x.grad is not None
    bank = memory.detach().clone()
    loss = chunked_snca_loss(x, bank, indices, labels, 0.05, chunk_size=7)
    bank[indices] = 0.0  # the memory update belongs after backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operator returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.slow  # N = 200,000 three times, once in float64
def test_memory_is_o_batch_times_chunk_not_batch_times_n():
    """N = 200,000, B = 64: a B x N float32 matrix would be 51 MB; no operator may return one."""
    batch, n, dim, chunk_size = 64, 200_000, 8, 4096
    g = torch.Generator().manual_seed(10)
    labels = torch.randint(0, 50, (n,), generator=g)                          # (N,)
    memory = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)  # (N, D)
    indices = torch.randperm(n, generator=g)[:batch]                          # (B,)
    features = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1)  # (B, D)

    x = features.clone().requires_grad_(True)
    saved = []
    with LargestTensor() as spy:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss = chunked_snca_loss(x, memory, indices, labels, 0.05, 0.2 / 0.05, chunk_size)
        # Kept for backward, anywhere in the graph: the inputs by reference, new tensors of O(B x D) elements, and
        # one number per memory row (the dataset index each row holds).
        inputs = {t.data_ptr() for t in (x, memory, indices, labels)}
        new = [t for t in saved if t.data_ptr() not in inputs]
        assert new and all(t.numel() <= max(batch * dim, n) for t in new)
        loss.backward()
    assert spy.largest <= batch * chunk_size < batch * n

    # Both float32 paths against the float64 chunked loss (equal to the explicit formula to 1e-12 above).
    exact_loss, exact_grad = value_and_grad(chunked(memory.double(), indices, labels, 0.05, 0.2 / 0.05),
                                            features.double())
    loss_bound, grad_bound = float32_error_bound(batch, dim, 0.05, terms=chunk_size + n // chunk_size)
    assert abs(loss.item() - exact_loss.item()) <= loss_bound * max(1, exact_loss.item())
    assert (x.grad.double() - exact_grad).abs().max() <= grad_bound

    # The spy sees the plain path's B x N logits, and it is as close to float64, summing over all N at once.
    with LargestTensor() as spy:
        want_loss, want_grad = value_and_grad(plain(memory, indices, labels, 0.05, 0.2 / 0.05), features)
    assert spy.largest >= batch * n
    loss_bound, grad_bound = float32_error_bound(batch, dim, 0.05, terms=n)
    assert abs(want_loss.item() - exact_loss.item()) <= loss_bound * max(1, exact_loss.item())
    assert (want_grad.double() - exact_grad).abs().max() <= grad_bound

