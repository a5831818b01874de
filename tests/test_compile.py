"""``--compile``: the compiled training step computes what the eager one does (equal in float64; in float32 up to
the rounding of kernels that sum in another order), writes the same checkpoint keys, and a compiled run resumes
without the flag."""
import os

import pytest
import torch
import torch.nn.functional as F
from test_entry_points import metrics, run, small_run

import lib.device
from lib import KeyEncoder
from lib.device import check_compiler, compile_network
from lib.errors import InputError
from models import EmbeddingNet


@pytest.mark.slow
def test_compiled_step_computes_the_eager_step_in_float64():
    """In float64 the rounding differences vanish: the compiled network's outputs, loss gradients and the compiled
    key encoder's outputs (BatchNorm in training mode) equal the eager ones, and the parameters are shared."""
    torch.manual_seed(0)
    net = EmbeddingNet("resnet18", 8, 3).double().to(memory_format=torch.channels_last)
    key_encoder = KeyEncoder(net)
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])

    def step(model):
        model.zero_grad(set_to_none=True)
        embeddings, logits = model(images)
        (embeddings.square().sum() + F.cross_entropy(logits, labels)).backward()
        return embeddings.detach(), [p.grad.clone() for p in net.parameters()]

    net.train()
    want, want_grads = step(net)
    want_keys = key_encoder(images)[0]
    compiled = compile_network(net, key_encoder)
    assert list(compiled.parameters()) == list(net.parameters())  # the EMA and the optimizer see the same tensors
    got, got_grads = step(compiled)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(key_encoder(images)[0], want_keys, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_compiled_run_trains_as_the_eager_one_and_resumes_without_the_flag(image_tree, tmp_path):
    """The tiny dataset's 32 training images are two full batches of 16: one shape, one compilation (MB: the
    key encoder's compilation is the float64 test's)."""
    out = str(tmp_path / "runs")
    eager = run("mb", *small_run("mb", image_tree, out, epochs=1, run_name="eager"), cwd=tmp_path)
    compiled = run("mb", *small_run("mb", image_tree, out, "--compile", epochs=1, run_name="compiled"), cwd=tmp_path)
    assert eager.returncode == 0 and compiled.returncode == 0, eager.stderr + compiled.stderr
    a, b = metrics(os.path.join(out, "eager"))[0], metrics(os.path.join(out, "compiled"))[0]
    for key in ("loss", "loss_snca", "loss_ce"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key

    sa, sb = (torch.load(os.path.join(out, name, "checkpoints", "last.pt"), weights_only=True)
              for name in ("eager", "compiled"))
    assert sb["args"]["compile"] is True
    for part in ("model", "memory"):
        assert sa[part].keys() == sb[part].keys(), part  # no "_orig_mod." prefix: the network's own keys
        for key, value in sa[part].items():
            if value.is_floating_point():
                # two float32 SGD steps: BatchNorm's bias gradients sum thousands of terms that nearly cancel, and
                # compiled kernels sum them in another order (float64 above: equal to 1e-9)
                torch.testing.assert_close(sb[part][key], value, rtol=1e-2, atol=1e-3, msg=f"{part}.{key}")
            else:
                assert torch.equal(sb[part][key], value), f"{part}.{key}"

    resumed = run("mb", *small_run("mb", image_tree, out, "--resume", os.path.join(out, "compiled"), epochs=2),
                  cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [m["epoch"] for m in metrics(os.path.join(out, "compiled"))] == [1, 2]


def test_compile_without_a_compiler_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(lib.device.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="--compile on the CPU needs a C\\+\\+ compiler"):
        check_compiler(torch.device("cpu"))
