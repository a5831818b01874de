"""lib.losses.dcnn and lib.losses.triplet against float64 double loops written from the formulas (docs/method.md
section 9)."""
import pytest
import torch

from lib.losses.dcnn import dcnn_loss
from lib.losses.triplet import sample_triplets, triplet_loss


def dcnn_double_loop(x, labels, tau, beta):
    """D-CNN's hinge, pair by pair; differentiable when ``x`` requires gradients."""
    b = len(labels)
    total = torch.zeros((), dtype=x.dtype)
    for i in range(b):
        for j in range(i + 1, b):
            d2 = sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1]))
            y = 1.0 if labels[i] == labels[j] else -1.0
            total = total + torch.clamp(beta - y * (tau - d2), min=0.0)
    return total / (b * b)


def triplet_loop(a, p, n, margin):
    """The triplet hinge, triplet by triplet."""
    total = torch.zeros((), dtype=a.dtype)
    for t in range(a.shape[0]):
        d2_ap = sum((a[t, k] - p[t, k]) ** 2 for k in range(a.shape[1]))
        d2_an = sum((a[t, k] - n[t, k]) ** 2 for k in range(a.shape[1]))
        total = total + torch.clamp(d2_ap - d2_an + margin, min=0.0)
    return total / a.shape[0]


def random_batch(seed, batch=7, dim=3, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    return x, torch.randint(0, classes, (batch,), generator=g)


# (0.44, 0.05) is the paper's setting; (2.0, 0.3) makes most different-class pairs active too.
@pytest.mark.parametrize("tau,beta", [(0.44, 0.05), (2.0, 0.3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dcnn_value_and_gradient_equal_the_double_loop(seed, tau, beta):
    x, labels = random_batch(seed)
    got = dcnn_loss(x.clone().requires_grad_(True), labels, tau=tau, beta=beta)
    want = dcnn_double_loop(x, labels.tolist(), tau, beta)
    assert got.dtype == torch.float64
    # float64 against a float64 loop over the same terms: sums of at most a few hundred terms
    # differ by ~100 ulps (2e-14 relative); 1e-12 / 1e-9 leave room and fail at any float32 step
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-15)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    dcnn_loss(x1, labels, tau=tau, beta=beta).backward()
    dcnn_double_loop(x2, labels.tolist(), tau, beta).backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12)


def test_dcnn_gradcheck():
    x, labels = random_batch(5)
    assert torch.autograd.gradcheck(lambda e: dcnn_loss(e, labels, tau=1.0, beta=0.3), (x.requires_grad_(True),))


def test_dcnn_both_kinds_of_pair_are_exercised():
    """The random batches above have active same-class and active different-class terms at the paper's setting."""
    kinds = set()
    for seed in range(3):
        x, labels = random_batch(seed)
        d2 = torch.cdist(x, x) ** 2
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                same = bool(labels[i] == labels[j])
                if 0.05 - (1 if same else -1) * (0.44 - d2[i, j]) > 0:
                    kinds.add(same)
    assert kinds == {True, False}


def test_dcnn_identical_embeddings_and_float32():
    """Duplicates make the expanded d2 round below zero; the clamp keeps the loss and gradient finite."""
    x = torch.nn.functional.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    x = x[torch.tensor([0, 0, 1, 1, 2, 3])].clone().requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 0, 1, 1])
    loss = dcnn_loss(x, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(x.grad).all()
    want = dcnn_double_loop(x.detach().double(), labels.tolist(), 0.44, 0.05)
    # float32 against float64 on the same float32 inputs: squared distances of 16-term unit vectors (~20 u each,
    # u = 6e-8) in a mean of 15 pair terms: ~40 u = 2.4e-6 relative; 1e-5 is 4 times that
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert dcnn_loss(x.detach().half(), labels).dtype == torch.float32


@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_value_and_gradient_equal_the_loop(margin):
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(9, 4, generator=g, dtype=torch.float64), dim=1)
               for _ in range(3))
    got = [t.clone().requires_grad_(True) for t in (a, p, n)]
    want = [t.clone().requires_grad_(True) for t in (a, p, n)]
    loss = triplet_loss(*got, margin=margin)
    oracle = triplet_loop(*want, margin)
    assert 0 < loss.item() == pytest.approx(oracle.item(), rel=1e-12)  # float64 against a float64 loop (~ulps)
    loss.backward()
    oracle.backward()
    for x, y in zip(got, want):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-12)
    assert triplet_loss(a.float(), p.float(), n.float()).dtype == torch.float32


def test_sample_triplets_labels():
    labels = torch.tensor([3, 0, 0, 7, 3, 3, 0, 9, 7, 0, 3])  # class 9 has a single image (index 7)
    for seed in range(20):
        positives, negatives = sample_triplets(labels, torch.Generator().manual_seed(seed))
        assert positives.dtype == negatives.dtype == torch.int64
        assert positives.shape == negatives.shape == labels.shape
        assert (labels[positives] == labels).all()
        anchors = torch.arange(len(labels))
        assert (positives != anchors)[anchors != 7].all() and positives[7] == 7
        assert (labels[negatives] != labels).all()


def test_sample_triplets_is_deterministic():
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(0))
    first = sample_triplets(labels, torch.Generator().manual_seed(42))
    again = sample_triplets(labels, torch.Generator().manual_seed(42))
    other = sample_triplets(labels, torch.Generator().manual_seed(43))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))


def test_negative_class_is_uniform_over_the_other_classes():
    """Class sizes 400/10/40/150: a per-image draw would pick class 1 about 5% of the time, a per-class draw 33%."""
    sizes = [400, 10, 40, 150]
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    negatives = sample_triplets(labels, torch.Generator().manual_seed(0))[1]
    counts = torch.bincount(labels[negatives[labels == 0]], minlength=4)[1:].double()  # anchors of class 0
    expected = sizes[0] / 3
    chi_square = ((counts - expected) ** 2 / expected).sum().item()
    assert chi_square < 20, counts  # 2 degrees of freedom: P(chi2 > 20) = 4.5e-5
    negatives = sample_triplets(labels, torch.Generator().manual_seed(1))[1]
    assert set(negatives[labels != 1].tolist()) >= set(range(400, 410))  # every image of a small class is drawn


def test_positive_is_uniform_over_the_other_images_of_the_class():
    """Over 900 epochs of one generator, each of an anchor's 9 classmates is its positive about 100 times."""
    labels = torch.tensor([0] * 10 + [1] * 5)
    generator = torch.Generator().manual_seed(0)
    positives = torch.stack([sample_triplets(labels, generator)[0] for _ in range(900)])  # (epochs, N)
    for anchor in (0, 4, 9):  # first, middle and last place in the class: the skip-over must not bias any
        counts = torch.bincount(positives[:, anchor], minlength=15)[:10].double()
        assert counts[anchor] == 0
        others = counts[torch.arange(10) != anchor]
        chi_square = ((others - 100) ** 2 / 100).sum().item()
        assert chi_square < 40, others  # 8 degrees of freedom: P(chi2 > 40) = 3e-6


def test_one_class_raises():
    with pytest.raises(ValueError):
        sample_triplets(torch.zeros(5, dtype=torch.int64), torch.Generator().manual_seed(0))
