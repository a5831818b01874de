"""models.EmbeddingNet: shapes, normalisation, the FC2-on-unnormalised-v wiring, and weight loading."""
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from errors import InputError
from models import EmbeddingNet, trunk_weights


@pytest.mark.parametrize("arch, size", [("resnet18", 32), ("resnet18", 45), ("resnet50", 32)])
def test_outputs(arch, size):
    model = EmbeddingNet(arch, dim=16, num_classes=5).eval()
    images = torch.randn(3, 3, size, size)
    embedding, logits = model(images)
    assert embedding.shape == (3, 16) and logits.shape == (3, 5)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    with torch.no_grad():
        v = model.fc1(model.trunk(images))
    torch.testing.assert_close(logits, model.fc2(v))  # prototypes act on the un-normalised feature
    torch.testing.assert_close(embedding, F.normalize(v, dim=1))


def test_heads_are_kaiming_normal():
    """std sqrt(2 / fan_in) and a normal's shape: kaiming_uniform_ has the same std but kurtosis 1.8, not 3.
    Bounds: 6 standard errors of the estimate from n draws (std: sigma / sqrt(2n); kurtosis of a normal:
    sqrt(24 / n)), so a correct initialisation fails with probability below 1e-8."""
    torch.manual_seed(0)
    model = EmbeddingNet("resnet18", dim=256, num_classes=100)
    for weight, fan_in in ((model.fc1.weight, 512), (model.fc2.weight, 256)):
        w = weight.detach().double().flatten()
        n = len(w)
        assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=6 / (2 * n) ** 0.5)
        kurtosis = ((w - w.mean()) ** 4).mean() / w.var(correction=0) ** 2
        assert kurtosis.item() == pytest.approx(3, abs=6 * (24 / n) ** 0.5)


def test_local_weights_file_is_loaded(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = EmbeddingNet("resnet18", dim=8, num_classes=3, trunk_state=trunk_weights("resnet18", path=str(path)))
    torch.testing.assert_close(model.trunk.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(model.trunk.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(InputError, match="do not fit resnet18"):
        EmbeddingNet("resnet18", trunk_state=trunk_weights("resnet18", path=str(path)))


def test_unreadable_weights_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="--weights .*broken.pth"):
        trunk_weights("resnet18", path=str(path))


def test_unavailable_imagenet_weights_stop_with_the_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(InputError, match=r"--pretrained none.*--weights PATH"):
        trunk_weights("resnet18", "imagenet")
    assert trunk_weights("resnet18", "none") is None
