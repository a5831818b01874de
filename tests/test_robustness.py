"""lib.eval.robustness: the 8 symmetries of the square form the group D4; a rotation-invariant embedding scores the same
under every one of them, with and without test-time augmentation."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lib.eval.metrics import knn_accuracies, retrieval_scores
from lib.eval.robustness import D4, rotation_scores, transform, tta_embed


def image(seed=0, size=6):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, size, size), dtype=np.uint8))


def test_the_eight_transforms_are_the_symmetries_of_the_square():
    x = image()
    planes = x.numpy().transpose(1, 2, 0)  # (H, W, 3): numpy's own rotation and mirror as the oracle
    for name, (mirror, turns) in D4.items():
        want = np.rot90(np.fliplr(planes) if mirror else planes, turns)
        np.testing.assert_array_equal(transform(x, name).numpy().transpose(1, 2, 0), want)
    images = {name: transform(x, name) for name in D4}
    assert len({tuple(t.flatten().tolist()) for t in images.values()}) == 8  # 8 distinct images
    assert torch.equal(images["identity"], x)


def test_the_transforms_are_closed_under_composition():
    x = image(1)
    by_pixels = {tuple(transform(x, name).flatten().tolist()): name for name in D4}
    table = {}
    for a, b in itertools.product(D4, D4):
        composed = tuple(transform(transform(x, a), b).flatten().tolist())
        assert composed in by_pixels, (a, b)
        table[a, b] = by_pixels[composed]
    for a in D4:  # every element has an inverse; the table is a Latin square
        assert any(table[a, b] == "identity" for b in D4)
        assert sorted(table[a, b] for b in D4) == sorted(D4)


def test_batches_are_transformed_image_by_image():
    batch = torch.stack([image(s) for s in range(4)])                                  # (4, 3, 6, 6)
    for name in D4:
        assert torch.equal(transform(batch, name), torch.stack([transform(x, name) for x in batch]))


def invariant_embedding(images):
    """Per-channel moments of the pixel values: unchanged by any permutation of the pixels, so by every symmetry."""
    x = images.double().flatten(2) / 255                                              # (N, 3, HW)
    return F.normalize(torch.cat([x.mean(2), (x**2).mean(2), x.amax(2), x.amin(2)], dim=1), dim=1)   # (N, 12)


def pixel_embedding(images):
    return F.normalize(images.double().flatten(1), dim=1)                             # (N, 3HW)


def toy_set(seed=2, classes=3, per_class=6, size=6):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    scale = rng.uniform(100, 140, (classes, 3))[labels] + rng.uniform(-40, 40, (len(labels), 3))  # overlapping
    images = rng.uniform(0, 1, (len(labels), 3, size, size)) * scale[:, :, None, None]
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_a_rotation_invariant_embedding_scores_the_same_under_every_transform(exclude_self):
    images, labels = toy_set()
    database = invariant_embedding(images)
    got = rotation_scores(lambda name: invariant_embedding(transform(images, name)), labels, database, labels,
                          exclude_self=exclude_self, k=3)
    plain = {"map": retrieval_scores(database, labels, database, labels, exclude_self=exclude_self)["map"],
             "knn_oa": knn_accuracies(database, labels, database, labels, ks=(3,), exclude_self=exclude_self)[3][
                 "overall"]}
    assert 0 < plain["map"] < 1
    for name in D4:
        assert got[name] == plain, name  # the same embeddings, bit for bit: the same scores
    assert got["worst"] == {"map": plain["map"], "map_transform": "identity", "knn_oa": plain["knn_oa"],
                            "knn_oa_transform": "identity"}


def test_an_embedding_of_raw_pixels_is_not_invariant():
    images, labels = toy_set()
    database = pixel_embedding(images)
    got = rotation_scores(lambda name: pixel_embedding(transform(images, name)), labels, database, labels)
    assert got["identity"]["map"] == retrieval_scores(database, labels, database, labels)["map"]
    assert got["worst"]["map"] < got["identity"]["map"] and got["worst"]["map_transform"] != "identity"
    assert got["worst"]["map"] == min(got[name]["map"] for name in D4)


def test_tta_is_the_renormalised_mean_over_the_transforms():
    images, _ = toy_set()
    assert torch.allclose(tta_embed(invariant_embedding, images), invariant_embedding(images), rtol=0, atol=1e-15)
    want = F.normalize(torch.stack([pixel_embedding(transform(images, n)) for n in D4]).mean(0), dim=1)
    assert torch.allclose(tta_embed(pixel_embedding, images), want, rtol=0, atol=1e-15)  # float64 rounding
    rotated = tta_embed(pixel_embedding, transform(images, "rot90"))
    assert torch.allclose(rotated, tta_embed(pixel_embedding, images), rtol=0, atol=1e-12)  # D4-invariant itself
