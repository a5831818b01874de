"""The SNCA-CE network (docs/method.md section 2; Kang et al., TGRS 2020, Fig. 2).

A ResNet trunk (conv1 .. layer4, global average pool), FC1 to a D-dim feature v, the
L2-normalised embedding e = v / |v| for SNCA, kNN and retrieval, and FC2 on the un-normalised v
whose weight rows are the learned class prototypes for the cross-entropy term.
"""
import torch.nn.functional as F
import torchvision
from torch import nn

from lib.checkpoint import load_state
from lib.errors import InputError
from models import ARCHS


class EmbeddingNet(nn.Module):
    def __init__(self, arch="resnet18", dim=128, num_classes=45, trunk_state=None):
        super().__init__()
        if arch not in ARCHS:
            raise InputError(f"--model {arch} is not one of {', '.join(ARCHS)}")
        self.trunk = getattr(torchvision.models, arch)(weights=None)
        features = self.trunk.fc.in_features
        self.trunk.fc = nn.Identity()
        if trunk_state is not None:
            try:
                self.trunk.load_state_dict({k: v for k, v in trunk_state.items() if not k.startswith("fc.")})
            except RuntimeError as error:
                raise InputError(f"the given weights do not fit {arch}: {str(error).splitlines()[0]}") from None
        self.fc1 = nn.Linear(features, dim)
        self.fc2 = nn.Linear(dim, num_classes)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.kaiming_normal_(self.fc2.weight)

    def forward(self, images):
        """Images (B, 3, H, W), H, W >= 32 -> embedding (B, D), unit norm, and class logits (B, C)."""
        v = self.fc1(self.trunk(images))          # (B, D)
        return F.normalize(v, dim=1), self.fc2(v)


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
