"""``--compile``: the compiled training step computes what the eager one does (equal in float64; in float32 up to
the rounding of kernels that sum in another order), writes the same checkpoint keys, and a compiled run resumes
without the flag.

Compiling a ResNet-18 takes TorchInductor a minute or two on 2 cores the first time (PyTorch keeps the kernels on
disk for the next): the compilations start with the session (``start_compilations``, called by conftest's
``compilations``), each in a process of its own beside the other tests, and the tests here wait for them."""
import os

import pytest
import torch
import torch.nn.functional as F
from test_entry_points import SCRIPTS, metrics, one_line_error, run, small_run

import lib.training.device
from errors import InputError
from lib.memories.bank import MemoryBank
from lib.memories.key_encoder import KeyEncoder
from lib.training.device import check_compiler, compile_network
from lib.training.utils import seed_everything
from models import EmbeddingNet

# Under ATEN_CPU_CAPABILITY=default (tests/other_cpus.sh: a CPU without AVX2) TorchInductor has no vector instruction
# set, and its scalar kernels for BatchNorm's training reductions do not compile: --compile is refused there.
NO_SIMD = os.environ.get("ATEN_CPU_CAPABILITY") == "default"


FLOAT64 = "test_compiled_step_computes_the_eager_step_in_float64"
RUN = "test_compiled_run_trains_as_the_eager_one_and_resumes_without_the_flag"


def start_compilations(wanted, tmp_path_factory, image_tree):
    """Start the compilations of the tests named in ``wanted``: {test name: (process, its output)}."""
    from conftest import fork_server, start_script

    started = {}
    if FLOAT64 in wanted and not NO_SIMD:
        path = str(tmp_path_factory.mktemp("compiled") / "float64.pt")
        process = fork_server().Process(target=float64_steps, args=(path,))
        process.start()
        started[FLOAT64] = (process, path)
    if RUN in wanted:
        out = tmp_path_factory.mktemp("compiled_run")
        flags = small_run("mb", image_tree, str(out / "runs"), "--compile", epochs=1, run_name="compiled")
        started[RUN] = (start_script(SCRIPTS["mb"], *flags, cwd=out), str(out / "runs"))
    return started


def float64_steps(path):
    """The eager and the compiled training step, and MU's key encoder before and after compilation, in float64:
    saved to ``path`` for the test to compare."""
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
    shared = list(compiled.parameters()) == list(net.parameters())  # the EMA and the optimizer see the same tensors
    got, got_grads = step(compiled)
    torch.save({"shared": shared, "want": want, "want_grads": want_grads, "want_keys": want_keys, "got": got,
                "got_grads": got_grads, "got_keys": key_encoder(images)[0]}, path)


@pytest.mark.slow
def test_compiled_step_computes_the_eager_step_in_float64(compilations):
    """In float64 the rounding differences vanish: the compiled network's outputs, loss gradients and the compiled
    key encoder's outputs (BatchNorm in training mode) equal the eager ones, and the parameters are shared."""
    if NO_SIMD:
        with pytest.raises(InputError, match="--compile on the CPU needs a SIMD instruction set"):
            check_compiler(torch.device("cpu"))
        return
    check_compiler(torch.device("cpu"))
    process, path = compilations[FLOAT64]
    process.join(600)
    assert process.exitcode == 0, f"the float64 steps ended with status {process.exitcode} (their stderr is above)"
    r = torch.load(path, weights_only=True)
    assert r["shared"]
    torch.testing.assert_close(r["got"], r["want"], rtol=1e-9, atol=1e-12)
    for g, w in zip(r["got_grads"], r["want_grads"]):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(r["got_keys"], r["want_keys"], rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_compiled_run_trains_as_the_eager_one_and_resumes_without_the_flag(compilations, image_tree, tmp_path):
    """The tiny dataset's 32 training images are two full batches of 16: one shape, one compilation (MB: the
    key encoder's compilation is the float64 test's). The compiled run started with the session."""
    started, out = compilations[RUN]
    compiled = started.wait()
    if NO_SIMD:
        one_line_error(compiled, "--compile", "SIMD")
        assert not os.path.exists(out)  # refused before anything was written
        return
    eager = run("mb", *small_run("mb", image_tree, out, epochs=1, run_name="eager"), cwd=tmp_path)
    assert eager.returncode == 0 and compiled.returncode == 0, eager.stderr + compiled.stderr
    a, b = metrics(os.path.join(out, "eager"))[0], metrics(os.path.join(out, "compiled"))[0]
    for key in ("loss", "loss_snca", "loss_ce"):
        # measured: the same run on 1 against 2 threads differs by 4e-6 (loss) and 1e-5 (loss_snca) relatively,
        # compiled against eager by 9e-6 and 2e-5: the tolerance is 5 to 10 times that noise
        assert b[key] == pytest.approx(a[key], rel=1e-4), key

    sa, sb = (torch.load(os.path.join(out, name, "checkpoints", "last.pt"), weights_only=True)
              for name in ("eager", "compiled"))
    assert sb["args"]["compile"] is True
    # The state before training, from the seed as the entry point makes it (seed_everything, then the network, then
    # the memory): the comparison must tell the two trained states apart from it.
    seed_everything(sa["args"]["seed"])
    initial = {"model": EmbeddingNet("resnet18", sa["args"]["dim"], 4).state_dict(),
               "memory": MemoryBank(torch.zeros(len(sa["memory"]["memory"])), sa["args"]["dim"]).state_dict()}
    for part in ("model", "memory"):
        assert sa[part].keys() == sb[part].keys() == initial[part].keys(), part  # no "_orig_mod." prefix
        for key, value in sa[part].items():
            if not value.is_floating_point():
                assert torch.equal(sb[part][key], value), f"{part}.{key}"
                continue
            # Per tensor, how far compiled is from eager against how far training moved eager from the start.
            # Two float32 SGD steps: BatchNorm's bias gradients sum thousands of terms that nearly cancel, and other
            # kernels sum them in another order (float64 above: equal to 1e-9). Measured on this run, as the norm
            # of the difference over the norm of the training step, per tensor: eager on 1 against 2 threads at
            # most 3.5e-3 (a BatchNorm bias), compiled against eager at most 1.3e-3; tolerance 3e-2, about 10 times
            # the noise, where a tensor left untrained (or trained by another step) is at 1 or more.
            moved = (value - initial[part][key]).norm()
            assert moved > 0, f"{part}.{key} did not train"
            ratio = (sb[part][key] - value).norm() / moved
            assert ratio < 3e-2, f"{part}.{key}: compiled - eager is {ratio:.2e} of the training step"

    resumed = run("mb", *small_run("mb", image_tree, out, "--resume", os.path.join(out, "compiled"), epochs=2),
                  cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [m["epoch"] for m in metrics(os.path.join(out, "compiled"))] == [1, 2]


def test_compile_without_a_compiler_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(lib.training.device.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="--compile on the CPU needs a C\\+\\+ compiler"):
        check_compiler(torch.device("cpu"))


def test_compile_without_simd_is_refused_before_training(monkeypatch):
    from torch._inductor import cpu_vec_isa

    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", lambda: cpu_vec_isa.InvalidVecISA())
    with pytest.raises(InputError, match="--compile on the CPU needs a SIMD instruction set"):
        check_compiler(torch.device("cpu"))
