"""Decode-once caches and batch sources: same images as per-file decoding, same order for both sources."""
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import datasets.cache
from datasets import DecodingBatches, TensorBatches, build_splits, decode_resized, decoded_images

from conftest import make_image_tree

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = make_image_tree(str(tmp_path_factory.mktemp("cache") / "ds"), classes=3, per_class=7, size=40)
    return build_splits(root, ext="png")["train"]


def test_decode_resized_is_the_reference_resize(samples):
    path = samples[0][0]
    want = T.Compose([T.Resize((24, 24)), T.PILToTensor()])(Image.open(path).convert("RGB"))
    assert torch.equal(decode_resized(path, 24), want)


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_images_equal_per_file_decoding(samples, workers):
    state = torch.get_rng_state()
    images = decoded_images(samples, 24, num_workers=workers)
    assert torch.equal(torch.get_rng_state(), state)  # decoding draws nothing from the global RNG
    assert images.dtype == torch.uint8 and images.shape == (len(samples), 3, 24, 24)
    for i, (path, _) in enumerate(samples):
        assert torch.equal(images[i], decode_resized(path, 24))


def test_disk_cache_is_reused_until_a_file_changes(samples, tmp_path, monkeypatch):
    first = decoded_images(samples, 24, cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(datasets.cache, "decode_all", no_decoding)
        assert torch.equal(decoded_images(samples, 24, cache_dir=str(tmp_path)), first)
    path = samples[0][0]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    changed = decoded_images(samples, 24, cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2 and changed[0].sum() == 0 and torch.equal(changed[1:], first[1:])


def test_tensor_batches_cover_every_image_once_and_keep_the_last_partial_batch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.arange(10) % 3
    g = torch.Generator()
    batches = TensorBatches(images, labels, 4, CPU, shuffle=True, generator=g)
    g.manual_seed(5)
    first = list(batches)
    assert len(batches) == 3 and [len(i) for _, _, i in first] == [4, 4, 2]
    seen = torch.cat([i for _, _, i in first])
    assert sorted(seen.tolist()) == list(range(10))
    for x, y, i in first:
        assert torch.equal(x[:, 0, 0, 0].long(), i) and torch.equal(y, labels[i])
    g.manual_seed(5)
    assert all(torch.equal(a[2], b[2]) for a, b in zip(first, batches))  # same seed, same order
    assert not torch.equal(torch.cat([i for _, _, i in batches]), seen)  # the next pass draws a new order


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_batches_equal_tensor_batches(samples, workers):
    labels = [label for _, label in samples]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cached = TensorBatches(decoded_images(samples, 24), labels, 4, CPU, shuffle=True, generator=g1)
    decoding = DecodingBatches(samples, 24, 4, CPU, workers, shuffle=True, generator=g2)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    for a, b in zip(cached, decoding, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG (augmentation's) was not drawn on


def test_training_batches_fold_a_last_batch_of_one_image_into_the_one_before():
    """9 images in batches of 4: BatchNorm cannot train on one image (at --image-size 32), so training batches
    (``fold_single``) end in one batch of 5; every image still comes once, a resume from step 1 gets the same
    batch, and each rank's part of it (torchrun) is its ``tensor_split`` part, ``global_size`` the whole."""
    images = torch.arange(9, dtype=torch.uint8).view(9, 1, 1, 1).expand(9, 3, 2, 2).contiguous()
    labels = torch.arange(9) % 3

    def make(rank=0, world_size=1, fold=True):
        batches = TensorBatches(images, labels, 4, CPU, shuffle=True, generator=torch.Generator().manual_seed(2),
                                rank=rank, world_size=world_size)
        batches.fold_single = fold
        return batches

    assert [len(i) for _, _, i in make(fold=False)] == [4, 4, 1]  # evaluation batches keep the partial batch
    batches = make()
    whole = [i for _, _, i in batches]
    assert len(batches) == 2 and [len(i) for i in whole] == [4, 5]
    assert [batches.global_size(step) for step in range(len(batches))] == [4, 5]
    assert sorted(torch.cat(whole).tolist()) == list(range(9))
    resumed = [i for _, _, i in make().iterate(1)]  # a run stopped after step 1 resumes with the folded batch
    assert len(resumed) == 1 and torch.equal(resumed[0], whole[1])
    parts = [[i for _, _, i in make(rank, 2)] for rank in range(2)]
    assert [[len(p) for p in rank] for rank in parts] == [[2, 3], [2, 2]]
    assert all(torch.equal(torch.cat([a, b]), w) for a, b, w in zip(*parts, whole))
    assert [make(rank, 2).global_size(step) for rank in range(2) for step in range(2)] == [4, 5, 4, 5]
    one = TensorBatches(images[:1], labels[:1], 4, CPU, shuffle=True, generator=torch.Generator())
    one.fold_single = True
    assert len(one) == 1 and [len(i) for _, _, i in one] == [1]  # nothing to fold into (lib.training.data refuses it)
