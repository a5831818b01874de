"""The reference training augmentation on whole uint8 batches, on the batch's own device (SPEC.md section 3).

Reference, per PIL image after the fixed resize: ``RandomGrayscale(p=0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
-> RandomHorizontalFlip(p=0.5) -> ToTensor -> Normalize(IMAGENET_MEAN, IMAGENET_STD)``;
evaluation: ``ToTensor -> Normalize``.
Here the random parameters are drawn per image with the same laws, and for fixed parameters every op
repeats the arithmetic of torchvision's *tensor* functional ops (``transforms._functional_tensor``),
batched: no Python loop over images.
"""
import torch

__all__ = ["FLIP_P", "GRAYSCALE_P", "IMAGENET_MEAN", "IMAGENET_STD", "JITTER", "apply_params", "draw_params",
           "eval_preprocess", "normalize", "to_float", "train_augment"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAYSCALE_P = 0.2  # RandomGrayscale(p)
JITTER = 0.4  # ColorJitter: brightness, contrast, saturation factors in [0.6, 1.4], hue shift in [-0.4, 0.4]
FLIP_P = 0.5  # RandomHorizontalFlip(p)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's fn_idx numbering: 0, 1, 2, 3
CPU_CHUNK_ELEMENTS = 2**20  # floats per CPU sub-batch in train_augment (4 MB: stays in cache)


def to_float(images_uint8):
    """uint8 (B,3,H,W) -> float32 in [0, 1], as ``ToTensor`` (``x.to(float32).div(255)``)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got {images_uint8.dtype}")
    return images_uint8.to(torch.float32).div(255)


def normalize(images):
    """``Normalize(IMAGENET_MEAN, IMAGENET_STD)`` on a float (B,3,H,W) batch: ``(x - mean) / std``."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)  # (1,3,1,1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)  # (1,3,1,1)
    return (images - mean) / std


def draw_params(batch_size, device, generator=None):
    """Per-image random parameters with the laws of ``RandomGrayscale``, ``ColorJitter.get_params`` and
    ``RandomHorizontalFlip``; ``generator`` (if given) must live on ``device``."""
    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    def uniform(low, high):
        return torch.empty(batch_size, device=device).uniform_(low, high, generator=generator)  # (B,)

    return {
        "grayscale": rand(batch_size) < GRAYSCALE_P,  # (B,) bool, as `torch.rand(1) < p`
        # argsort of i.i.d. uniforms is a uniform random permutation, like torch.randperm(4) per row
        "order": rand(batch_size, 4).argsort(dim=1),  # (B,4) long
        "brightness": uniform(max(0.0, 1 - JITTER), 1 + JITTER),  # (B,) float32
        "contrast": uniform(max(0.0, 1 - JITTER), 1 + JITTER),  # (B,)
        "saturation": uniform(max(0.0, 1 - JITTER), 1 + JITTER),  # (B,)
        "hue": uniform(-JITTER, JITTER),  # (B,)
        "flip": rand(batch_size) < FLIP_P,  # (B,) bool
    }


def _gray(img):
    """``rgb_to_grayscale``: (n,3,H,W) -> (n,1,H,W), same weights and evaluation order as torchvision."""
    r, g, b = img.unbind(dim=1)  # (n,H,W) each
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(img, other, ratio):
    """torchvision ``_blend``, ``(ratio * img + (1 - ratio) * other).clamp(0, 1)``, with the same operations
    in the same order (so the same numbers) but two allocations instead of four. ``1 - ratio`` is exact in
    float32 for ratio in [0.5, 2] (Sterbenz), so a float32 ratio matches torchvision's Python float."""
    ratio = ratio.view(-1, 1, 1, 1)  # (n,1,1,1)
    return (ratio * img).add_((1.0 - ratio) * other).clamp_(0, 1)


def _brightness(img, factor):
    return (factor.view(-1, 1, 1, 1) * img).clamp_(0, 1)  # _blend with zeros: adding 0 changes no number


def _contrast(img, factor):
    return _blend(img, _gray(img).mean(dim=(1, 2, 3), keepdim=True), factor)  # one mean per image: (n,1,1,1)


def _saturation(img, factor):
    return _blend(img, _gray(img), factor)


# Channel offsets of the closed form of HSV -> RGB: channel = V - V S clamp(min(k, 4 - k), 0, 1) with
# k = (offset + 6 H) mod 6 (offsets 5, 3, 1 for R, G, B); it is torchvision's six-sector table in one line.
_HSV_OFFSETS = (5.0, 3.0, 1.0)


def _hue(img, factor):
    """``adjust_hue``: torchvision's ``_rgb2hsv`` arithmetic, the hue shift, and HSV -> RGB in closed form
    (equal to torchvision's ``_hsv2rgb`` to float rounding, without its (n,H,W,3) integer sector index)."""
    r, g, b = img.unbind(dim=1)  # (n,H,W) each
    maxc, minc = img.amax(dim=1), img.amin(dim=1)  # (n,H,W)
    eqc = maxc == minc  # gray pixels: s = 0 and h = 0, so they come back unchanged
    cr = maxc - minc
    cr_divisor = torch.where(eqc, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    # torchvision sums three masked terms of which exactly one is non-zero; selecting it is the same number
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h6 = ((h + factor.view(-1, 1, 1)) % 1.0) * 6.0  # (n,H,W) shifted hue in sectors
    channels = []
    for offset in _HSV_OFFSETS:
        k = (h6 + offset) % 6.0
        channels.append(maxc - cr * torch.minimum(k, 4.0 - k).clamp_(0, 1))  # V S = max - min
    return torch.stack(channels, dim=1).clamp_(0, 1)  # (n,3,H,W)


_JITTER_FNS = (_brightness, _contrast, _saturation, _hue)


def _where(x, chosen, fn, factor=None):
    """In place: ``x[chosen] = fn(x[chosen], factor[chosen])``; one batched call for the whole subset."""
    idx = chosen.nonzero().squeeze(1)  # (n,)
    if idx.numel():
        sub = x.index_select(0, idx)
        x.index_copy_(0, idx, fn(sub) if factor is None else fn(sub, factor.index_select(0, idx)))
    return x


def _apply_inplace(x, params):
    """``apply_params`` writing into ``x`` (float (B,3,H,W)); ``train_augment`` owns its batch, so no copy."""
    _where(x, params["grayscale"], lambda img: _gray(img).expand_as(img))  # RandomGrayscale, 3 output channels
    # ColorJitter applies its four ops in each image's own order: step k runs op o on the images whose
    # order[:, k] == o, i.e. 16 batched calls whatever the batch size.
    for k in range(4):
        for o, (name, fn) in enumerate(zip(JITTER_OPS, _JITTER_FNS)):
            _where(x, params["order"][:, k] == o, fn, params[name])
    return _where(x, params["flip"], lambda img: img.flip(-1))  # RandomHorizontalFlip


def apply_params(images, params):
    """Grayscale (where chosen) -> colour jitter in each image's order -> flip, on a float (B,3,H,W)
    batch in [0, 1]; returns a new float (B,3,H,W) batch in [0, 1], not normalised."""
    return _apply_inplace(images.clone(), params)


def train_augment(images_uint8, generator=None):
    """The reference training transform (after the resize) on a uint8 (B,3,H,W) batch -> float32 (B,3,H,W).

    On the CPU the ops run on sub-batches of about 4 MB, which stay in cache (at 256 px this is over
    ten times faster than whole-batch passes through memory); the parameters are drawn for the whole
    batch first, so the result does not depend on the sub-batch size.
    """
    x = to_float(images_uint8)  # a fresh tensor, so the ops may write into it
    params = draw_params(x.shape[0], x.device, generator)
    step = len(x) if x.device.type != "cpu" else max(1, CPU_CHUNK_ELEMENTS // max(1, x[0].numel()))
    for start in range(0, len(x), step):
        part = slice(start, start + step)
        _apply_inplace(x[part], {name: value[part] for name, value in params.items()})  # writes through the view
    return normalize(x)


def eval_preprocess(images_uint8):
    """The reference evaluation transform (after the resize): ``ToTensor -> Normalize`` on a uint8 batch."""
    return normalize(to_float(images_uint8))
