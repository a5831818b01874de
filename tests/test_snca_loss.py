"""lib.snca_loss against the reference implementation's values and a float64 double loop (docs/method.md
section 4)."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib import chunked_snca_loss, snca_loss

from conftest import float32_error_bound

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def double_loop(logits, indices, labels, margin):
    """The formula, term by term, in float64 Python."""
    total = 0.0
    for row, i in enumerate(indices):
        p = z = 0.0
        for j in range(logits.shape[1]):
            if j != i:
                e = math.exp(logits[row, j])
                z += e
                p += e if labels[j] == labels[i] else 0.0
        p_new = p * math.exp(-margin)
        prob = p_new / (z - p + p_new)
        total += math.log(prob) if prob > 0 else 0.0
    return -total / len(indices)


def plain_formula(logits, indices, labels, margin):
    """The same formula with explicit exponentials, as differentiable float64 tensors."""
    mask = torch.ones_like(logits)
    mask[torch.arange(len(indices)), indices] = 0
    e = torch.exp(logits) * mask
    same = (labels[indices][:, None] == labels[None, :]).double()
    p, z = (e * same).sum(1), e.sum(1)
    p_new = p * math.exp(-margin)
    prob = p_new / (z - p + p_new)
    keep = prob > 0
    return -torch.log(prob[keep]).sum() / len(indices)


def random_problem(seed, batch=12, n=80, dim=16, classes=5, temperature=0.05):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[3] = classes  # a class with a single member: its row has no positive
    perm = torch.randperm(n, generator=g)
    indices = torch.cat([torch.tensor([3]), perm[perm != 3][: batch - 1]])  # distinct, the lonely image first
    features = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    memory = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    return features, memory, indices, labels, temperature


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_equals_reference_implementation(margin):
    z = np.load(os.path.join(FIXTURES, "reference_snca.npz"))
    temperature = float(z["temperature"])
    features = torch.tensor(z["features"], requires_grad=True)
    memory = torch.tensor(z[f"m{margin}_memory_before"])
    loss = snca_loss(features @ memory.T / temperature, torch.tensor(z["indices"]), torch.tensor(z["labels"]),
                     margin=margin / temperature)
    loss.backward()
    # Two float32 computations (ours, the reference's) from the same inputs: each within the float32 bound.
    loss_bound, grad_bound = float32_error_bound(len(features), memory.shape[1], temperature, len(memory))
    assert abs(loss.item() - float(z[f"m{margin}_loss"])) <= 2 * loss_bound * max(1, loss.item())
    assert np.abs(features.grad.numpy() - z[f"m{margin}_grad_features"]).max() <= 2 * grad_bound


@pytest.mark.parametrize("margin", [0.0, 0.2 / 0.05, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradient_equal_the_formula(margin, seed):
    features, memory, indices, labels, temperature = random_problem(seed)
    x = features.clone().requires_grad_(True)
    loss = snca_loss(x @ memory.T / temperature, indices, labels, margin=margin)
    loss.backward()
    # snca_loss rounds the float64 logits to float32 (off by u |s| <= u / T: conftest's bound with no dot product,
    # dim = 0) and works in float32; the double loop and the formula work in float64.
    loss_bound, grad_bound = float32_error_bound(len(indices), 0, temperature, len(memory))
    want = double_loop((features @ memory.T / temperature).numpy(), indices.tolist(), labels.tolist(), margin)
    assert abs(loss.item() - want) <= loss_bound * max(1, want)
    y = features.clone().requires_grad_(True)
    plain_formula(y @ memory.T / temperature, indices, labels, margin).backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=grad_bound)


def test_row_without_positive_is_dropped_but_divisor_stays_batch_size():
    features, memory, indices, labels, temperature = random_problem(3)
    logits = features @ memory.T / temperature
    whole = snca_loss(logits, indices, labels)
    rest = snca_loss(logits[1:], indices[1:], labels)  # row 0 has no positive
    # two float32 means over 12 and 11 rows of the same terms, one rescaled: (12 + 11 + 2) u = 1.5e-6 relative
    assert whole.item() == pytest.approx(rest.item() * (len(indices) - 1) / len(indices), rel=2e-6)
    x = features.clone().requires_grad_(True)
    snca_loss(x @ memory.T / temperature, indices, labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().max() == 0


def test_half_precision_logits_do_not_overflow():
    """Under autocast the logits may arrive as float16: exp(1/0.05) = 4.9e8 must not overflow."""
    features, memory, indices, labels, temperature = random_problem(4)
    for row, i in enumerate(indices[1:].tolist(), start=1):  # a same-class row at cosine 1: a logit of 20
        others = (labels == labels[i]) & (torch.arange(len(labels)) != i)
        memory[others.nonzero().flatten()[0]] = features[row]
    logits = features @ memory.T / temperature
    assert logits.max() > 19.99
    want = double_loop(logits.numpy(), indices.tolist(), labels.tolist(), 0.0)
    got = snca_loss(logits.half(), indices, labels)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    # float16 rounds each logit by at most 2^-11 |s| (half a unit in its last place); each row's loss is a
    # difference of two log-sum-exps, each moved by at most the largest logit change: 2 x 2^-11 max |s| in all,
    # plus the float32 arithmetic's own bound (dim = 0: no dot product).
    loss_bound, _ = float32_error_bound(len(indices), 0, temperature, len(memory))
    assert abs(got.item() - want) <= 2 * 2.0**-11 * logits.abs().max().item() + loss_bound * max(1, want)


def test_a_nan_similarity_makes_the_loss_nan_instead_of_dropping_its_row():
    """Only a row without a positive is dropped; a NaN must reach the loss, so that the step is stopped."""
    labels, indices = torch.arange(10) % 2, torch.arange(4)
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    logits[1, 3] = torch.nan
    assert snca_loss(logits, indices, labels).isnan()
    features = F.normalize(torch.randn(4, 8), dim=1)
    features[2, 0] = torch.nan
    memory = F.normalize(torch.randn(10, 8), dim=1)
    assert chunked_snca_loss(features, memory, indices, labels, 0.05, chunk_size=3).isnan()
