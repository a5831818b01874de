"""The SNCA-CE network (docs/method.md section 2; Kang et al., TGRS 2020).

A ResNet trunk (conv1 .. layer4, global average pool), FC1 to a D-dim feature v, the
L2-normalised embedding e = v / |v| for SNCA, kNN and retrieval, and FC2 on the un-normalised v
whose weight rows are the learned class prototypes for the cross-entropy term.

N-band input (``n_band``, any N, three bands included): the trunk's first convolution takes N channels;
ImageNet weights are carried over by ``adapt_first_conv``.
"""
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from errors import InputError, load_state
from models import ARCHS


def adapt_first_conv(weight, in_channels, rgb=None):
    """The first convolution's weight (O, 3, k, k), trained on RGB, for ``in_channels`` = N bands: (O, N, k, k).

    The bands at positions ``rgb`` (red, green, blue; None: there are none) get the RGB filters, every other
    band their mean, and the whole layer is scaled by 3 / N. The N filters then sum to the 3 RGB ones, so an
    image whose N bands are all equal gives what the RGB layer gives the same grey RGB image. timm's
    ``adapt_input_conv`` also scales by 3 / N, but fills the N bands by cycling R, G, B, R, G, B, ... in band
    order, whatever the bands are; here the bands that are red, green and blue keep their own filters.
    """
    out = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)                    # (O, N, k, k)
    if rgb is not None:
        out[:, list(rgb)] = weight
    return out * (3 / in_channels)


class EmbeddingNet(nn.Module):
    def __init__(self, arch="resnet18", dim=128, num_classes=45, trunk_state=None, in_channels=3, rgb=None,
                 n_band=None):
        """``in_channels`` bands of N-band images (``n_band``; default: when ``in_channels`` is not 3), of which
        those at positions ``rgb`` are red, green, blue; else 8-bit RGB images as torchvision's ResNets take them.
        Three bands read from N-band files are N-band input too: bands 2, 3, 4 of Sentinel-2 are blue, green, red,
        and ImageNet's filters go to the bands ``rgb`` names, not to the files' order."""
        super().__init__()
        n_band = in_channels != 3 if n_band is None else n_band
        if arch not in ARCHS:
            raise InputError(f"--model {arch} is not one of {', '.join(ARCHS)}")
        self.trunk = getattr(torchvision.models, arch)(weights=None)
        features = self.trunk.fc.in_features
        self.trunk.fc = nn.Identity()
        rgb_state = trunk_state is not None and trunk_state.get("conv1.weight", torch.empty(0, 3)).shape[1] == 3
        if n_band and not rgb_state:  # from scratch, or weights of N-band input already
            self.trunk.conv1 = n_band_conv(self.trunk.conv1, in_channels)
        if trunk_state is not None:
            try:
                self.trunk.load_state_dict({k: v for k, v in trunk_state.items() if not k.startswith("fc.")})
            except RuntimeError as error:
                raise InputError(f"the given weights do not fit {arch}: {str(error).splitlines()[0]}") from None
        if n_band and rgb_state:  # ImageNet's (or another RGB) first layer, carried over to N bands
            rgb_weight = self.trunk.conv1.weight.detach()
            self.trunk.conv1 = n_band_conv(self.trunk.conv1, in_channels)
            with torch.no_grad():
                self.trunk.conv1.weight.copy_(adapt_first_conv(rgb_weight, in_channels, rgb))
        self.fc1 = nn.Linear(features, dim)
        self.fc2 = nn.Linear(dim, num_classes)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)

    def forward(self, images):
        """Images (B, 3 or N, H, W), H, W >= 32 -> embedding (B, D), unit norm, and class logits (B, C)."""
        v = self.fc1(self.trunk(images))          # (B, D)
        return F.normalize(v, dim=1), self.fc2(v)


def n_band_conv(conv, in_channels):
    """A copy of the layout of ``conv`` taking ``in_channels``, initialised as torchvision initialises ResNets."""
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new


def trunk_weights(arch, pretrained="imagenet", path=None):
    """The trunk's starting state dict: a local file, torchvision's ImageNet weights, or None.

    Fails before any training with a message naming the alternatives when the weights cannot be had.
    """
    if path:
        return load_state(path, flag="--weights")
    if pretrained == "none":
        return None
    weights = getattr(torchvision.models, ARCHS[arch]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # noqa: BLE001 -- any failure to download or read the cache
        raise InputError(
            f"cannot obtain the ImageNet weights of {arch} ({type(error).__name__}: {error}); "
            "train from scratch with --pretrained none, or give a local torchvision state dict with --weights PATH"
        ) from None
