"""The reference training augmentation on whole uint8 batches, on the batch's own device (docs/method.md section 3).

Reference, per PIL image after the fixed resize: ``RandomGrayscale(p=0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
-> RandomHorizontalFlip(p=0.5) -> ToTensor -> Normalize(IMAGENET_MEAN, IMAGENET_STD)``;
evaluation: ``ToTensor -> Normalize``.
Here the random parameters are drawn per image with the same laws, and for fixed parameters every op
repeats the arithmetic of torchvision's *tensor* functional ops (``transforms._functional_tensor``),
batched: no Python loop over images.

N-band images (``--bands``) have their own pipeline, ``BandPipeline``: per-band standardisation with the
training split's statistics and the geometric ops, which mean the same for any band set; grayscale and
colour jitter are defined on 8-bit RGB only and stay on the reference pipeline.
"""
import torch

from datasets.bands import BandInput, rgb_composite, safe_std

__all__ = ["FLIP_P", "GRAYSCALE_P", "IMAGENET_MEAN", "IMAGENET_STD", "JITTER", "RGB", "BandPipeline", "apply_params",
           "draw_params", "eval_preprocess", "normalize", "pipeline_of", "to_float", "train_augment"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAYSCALE_P = 0.2  # RandomGrayscale(p)
JITTER = 0.4  # ColorJitter: brightness, contrast, saturation factors in [0.6, 1.4], hue shift in [-0.4, 0.4]
FLIP_P = 0.5  # RandomHorizontalFlip(p)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's fn_idx numbering: 0, 1, 2, 3
# train_augment's CPU sub-batches: images of up to CPU_OWN_ELEMENTS floats (~209 px) go CPU_CHUNK_ELEMENTS floats
# (4 MB) at a time, so that small images pay few calls; a larger image is a sub-batch of its own, which stays in
# cache and is never gathered and scattered back (an op chosen for a subset of the sub-batch does that).
CPU_CHUNK_ELEMENTS = 2**20
CPU_OWN_ELEMENTS = 2**17


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


def _blend_(img, other, ratio):
    """torchvision ``_blend``, ``(ratio * img + (1 - ratio) * other).clamp(0, 1)``, written into ``img`` with the
    same operations in the same order (so the same numbers). ``1 - ratio`` is exact in float32 for ratio in
    [0.5, 2] (Sterbenz), so a float32 ratio matches torchvision's Python float."""
    ratio = ratio.view(-1, 1, 1, 1)  # (n,1,1,1)
    return img.mul_(ratio).add_((1.0 - ratio) * other).clamp_(0, 1)


def _brightness_(img, factor):
    return img.mul_(factor.view(-1, 1, 1, 1)).clamp_(0, 1)  # _blend with zeros: adding 0 changes no number


def _contrast_(img, factor):
    return _blend_(img, _gray(img).mean(dim=(1, 2, 3), keepdim=True), factor)  # one mean per image: (n,1,1,1)


def _saturation_(img, factor):
    return _blend_(img, _gray(img), factor)


def _hue_(img, factor):
    """``adjust_hue`` written into ``img``: torchvision's ``_rgb2hsv`` arithmetic, the hue shift, and HSV -> RGB
    in closed form (equal to torchvision's to float rounding; tested against it and against ``colorsys``).

    Written for the CPU's vector units: no boolean tensors, no ``where``, no ``fmod`` (each of which
    costs 5 to 40 times an add there). A sector test ``maxc == r`` is ``1 - ceil(rc)`` with ``rc`` in
    [0, 1]; torchvision's ``mod 1`` of an argument known to lie in (-1, 2) is ``x - floor(x)``, the same
    float; and the six-sector table of HSV -> RGB is three clamped triangle waves of the hue in [0, 6).
    """
    r, g, b = img.unbind(dim=1)  # (n,H,W) each, views of img
    maxc = torch.maximum(torch.maximum(r, g), b)  # (n,H,W), = img.amax(dim=1)
    cr = maxc - torch.minimum(torch.minimum(r, g), b)  # chroma, V S
    gray = 1.0 - cr.ceil()  # 1 where maxc == minc (s = 0: the pixel comes back unchanged), else 0
    divisor = cr + gray
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor  # in [0, 1]
    # torchvision sums three masked terms of which exactly one is non-zero: red first, then green, then blue
    is_r = 1.0 - rc.ceil()
    is_g = (1.0 - is_r) * (1.0 - gc.ceil())
    is_b = 1.0 - is_r - is_g
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)  # in [-1, 5]
    h = h / 6.0 + 1.0
    h = h - h.floor()  # torch.fmod(h, 1.0)
    h = h + factor.view(-1, 1, 1)
    h6 = (h - h.floor()) * 6.0  # (h + factor) % 1, in sectors [0, 6)
    torch.sub(maxc, cr * (2.0 - (h6 - 3.0).abs()).clamp_(0, 1), out=r)  # 1 - red share of the saturated hue
    torch.sub(maxc, cr * ((h6 - 2.0).abs() - 1.0).clamp_(0, 1), out=g)
    torch.sub(maxc, cr * ((h6 - 4.0).abs() - 1.0).clamp_(0, 1), out=b)
    return img.clamp_(0, 1)


def _grayscale_(img):
    return img.copy_(_gray(img).expand_as(img))  # RandomGrayscale keeps 3 output channels


def _flip_(img):
    return img.copy_(img.flip(-1))


_JITTER_FNS = (_brightness_, _contrast_, _saturation_, _hue_)


def _where(x, chosen, fn_, factor=None):
    """In place: ``x[chosen] = fn_(x[chosen], factor[chosen])``; one batched call for the whole subset."""
    idx = chosen.nonzero().squeeze(1)  # (n,)
    args = () if factor is None else (factor,)
    if idx.numel() == len(x):  # the whole (sub-)batch: written in place, no gather and scatter
        fn_(x, *args)
    elif idx.numel():
        x.index_copy_(0, idx, fn_(x.index_select(0, idx), *(a.index_select(0, idx) for a in args)))
    return x


def _apply_inplace(x, params):
    """``apply_params`` writing into ``x`` (float (B,3,H,W)); ``train_augment`` owns its batch, so no copy."""
    _where(x, params["grayscale"], _grayscale_)
    # ColorJitter applies its four ops in each image's own order: step k runs op o on the images whose
    # order[:, k] == o, i.e. 16 batched calls whatever the batch size.
    for k in range(4):
        for o, (name, fn) in enumerate(zip(JITTER_OPS, _JITTER_FNS)):
            _where(x, params["order"][:, k] == o, fn, params[name])
    return _where(x, params["flip"], _flip_)  # RandomHorizontalFlip


def apply_params(images, params):
    """Grayscale (where chosen) -> colour jitter in each image's order -> flip, on a float (B,3,H,W)
    batch in [0, 1]; returns a new float (B,3,H,W) batch in [0, 1], not normalised."""
    return _apply_inplace(images.clone(), params)


def train_augment(images_uint8, generator=None, params=None):
    """The reference training transform (after the resize) on a uint8 (B,3,H,W) batch -> float32 (B,3,H,W).

    The parameters (``params``, or drawn here from ``generator``) cover the whole batch first; on the CPU
    every step (``ToTensor``, the ops, ``Normalize``) then runs on sub-batches (``cpu_sub_batch``): at 256 px
    one image at a time is faster than whole-batch passes through memory; at 64 px a batch of 64 is one
    sub-batch. The result does not depend on the sub-batch.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got {images_uint8.dtype}")
    params = params if params is not None else draw_params(images_uint8.shape[0], images_uint8.device, generator)
    out = torch.empty(images_uint8.shape, dtype=torch.float32, device=images_uint8.device)  # (B,3,H,W)
    step = len(out) if out.device.type != "cpu" else cpu_sub_batch(out[0:1].numel())
    mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(1, 3, 1, 1)  # (1,3,1,1)
    std = torch.tensor(IMAGENET_STD, device=out.device).view(1, 3, 1, 1)  # (1,3,1,1)
    for start in range(0, len(out), step):
        part = slice(start, start + step)
        x = out[part].copy_(images_uint8[part]).div_(255)  # ToTensor, written through the view
        _apply_inplace(x, {name: value[part] for name, value in params.items()})
        x.sub_(mean).div_(std)  # Normalize
    return out


def cpu_sub_batch(image_elements):
    """Images per CPU sub-batch of ``train_augment`` for images of ``image_elements`` floats (C x H x W)."""
    return 1 if image_elements > CPU_OWN_ELEMENTS else max(1, CPU_CHUNK_ELEMENTS // max(1, image_elements))


def eval_preprocess(images_uint8):
    """The reference evaluation transform (after the resize): ``ToTensor -> Normalize`` on a uint8 batch."""
    return normalize(to_float(images_uint8))


class RGBPipeline:
    """The reference pipeline of 8-bit RGB images (the functions above), behind ``BandPipeline``'s interface."""
    channels, rgb, stats = 3, None, None
    ops = ("grayscale (p=0.2)", "colour jitter (0.4, 0.4, 0.4, 0.4)", "horizontal flip (p=0.5)")

    def draw(self, batch_size, device, generator=None):
        return draw_params(batch_size, device, generator)

    def train(self, images, generator=None, params=None):
        return train_augment(images, generator, params)

    def eval(self, images):
        return eval_preprocess(images)

    def display(self, images):
        """uint8 RGB (n, 3, H, W) for figures: the images themselves."""
        return images


RGB = RGBPipeline()


class BandPipeline:
    """N-band images (B, C, S, S) of any dtype -> float32, standardised per band with the training split's
    mean and std (``bands``, a ``datasets.bands.BandInput`` with its statistics); for training, then a
    horizontal flip with p = 0.5 (the reference's) and, with ``rot90``, a rotation by k x 90 degrees, k uniform
    in {0, 1, 2, 3} (with the flip, the 8 symmetries of the square). Batched on the images' device.
    Standardising first is the same as last: both ops only move pixels."""

    def __init__(self, bands, rot90=False):
        self.bands, self.rot90 = bands, rot90
        self.channels, self.rgb, self.stats = bands.channels, bands.rgb, bands.to_json()
        self.ops = ("horizontal flip (p=0.5)",) + (("rotation by k x 90 degrees",) if rot90 else ())
        self.mean = torch.tensor(bands.mean, dtype=torch.float32).view(1, -1, 1, 1)           # (1, C, 1, 1)
        self.std = torch.tensor(safe_std(bands.std), dtype=torch.float32).view(1, -1, 1, 1)   # (1, C, 1, 1)

    def draw(self, batch_size, device, generator=None):
        params = {"flip": torch.rand(batch_size, generator=generator, device=device) < FLIP_P}    # (B,) bool
        if self.rot90:
            params["rot90"] = torch.randint(0, 4, (batch_size,), generator=generator, device=device)  # (B,)
        return params

    def eval(self, images):
        """(x - mean) / std per band, float32 (B, C, S, S)."""
        return (images.to(torch.float32) - self.mean.to(images.device)) / self.std.to(images.device)

    def train(self, images, generator=None, params=None):
        """Flip, then rotate, each image as drawn: one gather through the index map of its symmetry (the source
        pixel of each output pixel; a flip and a rotation only move pixels), after the standardisation."""
        params = params if params is not None else self.draw(images.shape[0], images.device, generator)
        x = self.eval(images).flatten(2)                                                       # (B, C, S*S)
        which = params["flip"].long() * 4 + (params["rot90"] if self.rot90 else 0)             # (B,) in 0..7
        source = symmetry_maps(images.shape[-1], images.device)[which]                         # (B, S*S)
        return x.gather(2, source[:, None].expand_as(x)).view(images.shape)                   # (B, C, S, S)

    def display(self, images):
        """uint8 RGB composites (n, 3, H, W) of the red, green, blue bands, stretched per image and band."""
        return rgb_composite(images, self.rgb)


def symmetry_maps(size, device):
    """(8, S*S) long: for flip f and k quarter turns, row 4 f + k holds the source pixel of each output pixel of
    ``rot90(flip(x) if f else x, k)``, i.e. that transform applied to the image of pixel indices."""
    pixels = torch.arange(size * size, device=device).view(size, size)                        # (S, S)
    return torch.stack([(pixels.flip(-1) if f else pixels).rot90(k).flatten() for f in (0, 1) for k in range(4)])


def pipeline_of(band_stats, rot90=False):
    """The pipeline of a run from its ``band_stats`` record: ``RGB`` when it has none (8-bit RGB images)."""
    return RGB if band_stats is None else BandPipeline(BandInput.from_json(band_stats), rot90)
