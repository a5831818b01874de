"""The batched training augmentation equals torchvision's tensor ops per image and draws with the reference's laws."""
import colorsys
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from datasets import augment, decode_resized
from datasets.augment import (
    apply_params,
    draw_params,
    eval_preprocess,
    normalize,
    to_float,
    train_augment,
)
from lib.cli.args import get_args_parser

# The authors' transforms (train_SNCA_CE/main.py of github.com/jiankang1991/SNCA_CE), written here rather than
# imported from datasets/augment.py, so that a wrong constant there fails: Resize((256, 256)), RandomGrayscale(p=0.2),
# ColorJitter(0.4, 0.4, 0.4, 0.4) (factors in [0.6, 1.4], hue shift in [-0.4, 0.4]), RandomHorizontalFlip() (p = 0.5),
# ToTensor, Normalize with the ImageNet mean and std; evaluation: Resize((256, 256)), ToTensor, Normalize.
GRAYSCALE_P, FLIP_P, JITTER, SIZE = 0.2, 0.5, 0.4, 256
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

TF_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)  # fn_idx 0..3
NAMES = ("brightness", "contrast", "saturation", "hue")
# The same arithmetic runs per image and batched; only reductions (contrast's mean) may sum in another order, and
# vectorised kernels may fuse a multiply-add. The float32 bound on values in [0, 1] (u = 2^-24 = 6e-8): a blend
# clamp(f x + (1 - f) g) adds 3 roundings plus g's error (a mean of 3 channels, or contrast's mean of H x W = 340
# pixels summed pairwise: (log2(340) + 1) u = 10 u) and passes its input's error on times |f| + |1 - f| <= 1.8
# (f in [0.6, 1.4]); the hue shift is ~15 roundings. Four ops in a row: below (15 + 1.8 (13 + 1.8 (13 + 1.8 13))) u
# = 110 u = 7e-6 (grayscale, a 3-term weighted sum, adds 4 u once).
ATOL = 1e-5


def float_images(batch=24, size=(20, 17), seed=0):
    """Random colour images in [0, 1], plus pure-gray images, saturated colours and gray / black / white pixels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, *size, generator=g)
    x[0:3] = torch.rand(3, 1, *size, generator=g).expand(3, 3, *size)  # pure gray images
    x[3:6] = torch.randint(0, 2, (3, 3, *size), generator=g).float()  # saturated: every channel 0 or 1
    x[6, :, :5] = 0.0
    x[6, :, 5:10] = 1.0
    x[7, :, ::2] = x[7, :1, ::2]  # gray pixels inside a colour image
    x[8, 0], x[8, 1], x[8, 2] = 0.9, 0.1, 0.12  # red with a touch of blue: hue just below 1, wraps when shifted
    return x


def reference(img, params, i):
    """torchvision's tensor functional ops, one image at a time, in that image's own jitter order."""
    if params["grayscale"][i]:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    for o in params["order"][i].tolist():
        img = TF_OPS[o](img, float(params[NAMES[o]][i]))
    return TF.hflip(img) if params["flip"][i] else img


def test_apply_params_equals_per_image_torchvision():
    x = float_images()
    params = draw_params(len(x), "cpu", torch.Generator().manual_seed(1))
    params["grayscale"][:4] = torch.tensor([True, False, True, False])  # both branches, gray input included
    params["hue"][8:12] = torch.tensor([-JITTER, JITTER, -0.05, 0.05])
    assert params["grayscale"].any() and not params["grayscale"].all()
    assert params["flip"].any() and not params["flip"].all()
    assert len({tuple(r) for r in params["order"].tolist()}) > 10
    before = x.clone()
    out = apply_params(x, params)
    assert torch.equal(x, before)  # the input is not modified
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    expected = torch.stack([reference(x[i], params, i) for i in range(len(x))])
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)


def test_normalize_equals_torchvision():
    x = float_images()
    assert torch.equal(normalize(x), TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD))


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_single_blend_op_equals_torchvision(name):
    x = float_images()
    factors = torch.linspace(1 - JITTER, 1 + JITTER, len(x))
    factors[0] = 1.0
    out = getattr(augment, f"_{name}_")(x.clone(), factors)  # writes into its argument
    op = TF_OPS[NAMES.index(name)]
    expected = torch.stack([op(x[i], float(factors[i])) for i in range(len(x))])
    torch.testing.assert_close(out, expected, rtol=0, atol=ATOL)


def test_hue_equals_torchvision_including_negative_shifts_and_gray():
    x = float_images()
    factors = torch.linspace(-0.5, 0.5, len(x))  # the whole range torchvision accepts, both ends included
    factors[:3] = torch.tensor([-0.4, 0.4, -0.13])  # the gray images
    factors[8] = 0.3
    out = augment._hue_(x.clone(), factors)
    expected = torch.stack([TF.adjust_hue(x[i], float(factors[i])) for i in range(len(x))])
    # identical arithmetic element by element, up to the fused multiply-adds a vectorised kernel may use: a few
    # float32 roundings of values <= 1 (u = 6e-8); 1e-6 is 16 u
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(out[:3], x[:3])  # gray images come back exactly


def test_hue_wraps_to_exactly_one():
    """A hue just below 0 wraps to ``(h + shift) % 1.0 == 1.0`` in float32: that is sector 0 again, not 5."""
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # hue 0
    out = augment._hue_(red.clone(), torch.tensor([-1e-9]))
    assert torch.equal(out, TF.adjust_hue(red[0], -1e-9).unsqueeze(0))
    torch.testing.assert_close(out, red, rtol=0, atol=1e-6)  # a shift of 1e-9 moves a value by 6e-9, + 1 rounding


def test_hue_against_colorsys():
    """An oracle independent of torchvision: shift the HSV hue modulo 1 with Python's colorsys."""
    pixels = [(0.9, 0.1, 0.12), (0.1, 0.8, 0.3), (0.2, 0.3, 0.95), (1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0)]
    for shift in (-0.4, -0.25, 0.0, 0.1, 0.4):
        img = torch.tensor(pixels).T.reshape(1, 3, 1, len(pixels))
        out = augment._hue_(img, torch.tensor([shift]))[0, :, 0].T
        for pixel, got in zip(pixels, out.tolist()):
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            # float32 against colorsys's float64: the input rounded (u = 6e-8) and ~15 float32 roundings, those of the
            # hue multiplied by 6 in the sector arithmetic: below 6 x 15 u = 5e-6
            assert got == pytest.approx(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v), abs=1e-5)


def test_draw_params_laws():
    n = 200_000
    p = draw_params(n, "cpu", torch.Generator().manual_seed(123))
    assert {k: (v.shape, v.dtype) for k, v in p.items()} == {
        "grayscale": ((n,), torch.bool), "order": ((n, 4), torch.long), "flip": ((n,), torch.bool),
        **{k: ((n,), torch.float32) for k in NAMES},
    }
    for key, prob in (("grayscale", GRAYSCALE_P), ("flip", FLIP_P)):
        rate = p[key].double().mean().item()
        assert abs(rate - prob) < 5 * math.sqrt(prob * (1 - prob) / n), key

    order = p["order"]
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand(n, 4))  # every row a permutation
    counts = torch.bincount(order @ torch.tensor([64, 16, 4, 1]), minlength=256).double()
    assert (counts > 0).sum() == 24
    expected = n / 24
    chi2 = ((counts[counts > 0] - expected) ** 2 / expected).sum().item()
    assert chi2 < 49.7  # 0.999 quantile of chi-square with 23 degrees of freedom

    ranges = {"brightness": (1 - JITTER, 1 + JITTER), "contrast": (1 - JITTER, 1 + JITTER),
              "saturation": (1 - JITTER, 1 + JITTER), "hue": (-JITTER, JITTER)}
    for name, (low, high) in ranges.items():
        f = p[name].double()
        width = high - low
        mean, var = (low + high) / 2, width ** 2 / 12
        se_mean = math.sqrt(var / n)
        se_var = math.sqrt((width ** 4 / 80 - var ** 2) / n)  # fourth central moment of U[low, high]: width^4 / 80
        assert low - 1e-6 <= f.min().item() and f.max().item() <= high + 1e-6, name
        assert abs(f.mean().item() - mean) < 5 * se_mean, name
        assert abs(f.var().item() - var) < 5 * se_var, name
        for first in range(4):  # independent of the order: same law whichever op comes first
            group = f[order[:, 0] == first]
            assert abs(group.mean().item() - mean) < 5 * math.sqrt(var / len(group)), (name, first)

    columns = torch.stack([p[k].double() for k in (*NAMES, "grayscale", "flip")])  # (6, n)
    corr = torch.corrcoef(columns)
    assert (corr - torch.eye(6, dtype=torch.float64)).abs().max() < 5 / math.sqrt(n)  # pairwise uncorrelated


def test_train_augment_shape_device_determinism():
    images = torch.randint(0, 256, (6, 3, 16, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    a = train_augment(images, torch.Generator().manual_seed(7))
    b = train_augment(images, torch.Generator().manual_seed(7))
    c = train_augment(images, torch.Generator().manual_seed(8))
    assert a.dtype == torch.float32 and a.shape == images.shape and a.device == images.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    params = draw_params(len(images), images.device, torch.Generator().manual_seed(7))
    assert torch.equal(a, normalize(apply_params(to_float(images), params)))
    with pytest.raises(TypeError):
        train_augment(images.float())


def test_eval_preprocess_equals_totensor_normalize_on_pil():
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(4, 10, 14, 3), dtype=np.uint8)  # (B,H,W,3) as PIL stores them
    reference_transform = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([reference_transform(Image.fromarray(a)) for a in arrays])
    out = eval_preprocess(torch.from_numpy(arrays).permute(0, 3, 1, 2))
    assert torch.equal(out, expected)


def test_cpu_sub_batches_do_not_change_the_result(monkeypatch):
    images = torch.randint(0, 256, (10, 3, 16, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    whole = train_augment(images, torch.Generator().manual_seed(7))
    monkeypatch.setattr(augment, "CPU_CHUNK_ELEMENTS", 3 * images[0].numel())  # sub-batches of 3, 3, 3, 1
    assert augment.cpu_sub_batch(images[0].numel()) == 3
    assert torch.equal(train_augment(images, torch.Generator().manual_seed(7)), whole)
    monkeypatch.setattr(augment, "CPU_OWN_ELEMENTS", images[0].numel() - 1)  # an image is a sub-batch of its own
    assert augment.cpu_sub_batch(images[0].numel()) == 1
    assert torch.equal(train_augment(images, torch.Generator().manual_seed(7)), whole)


def test_the_pipeline_is_the_authors_at_the_paper_size(tmp_path):
    """Image size 256 by default, and the decode-once resize is torchvision's Resize((256, 256)) of the PIL image (no
    crop, aspect ratio not kept), so that the cached uint8 images are what the authors' first transform produced."""
    assert get_args_parser("mb").parse_args([]).image_size == SIZE
    assert get_args_parser("mu").parse_args([]).image_size == SIZE
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(300, 420, 3), dtype=np.uint8))  # not square, not 256
    image.save(tmp_path / "scene.png")
    want = T.PILToTensor()(T.Resize((SIZE, SIZE))(image))                               # (3, 256, 256) uint8
    assert torch.equal(decode_resized(str(tmp_path / "scene.png"), SIZE), want)
