"""The device and numeric precision of a run, chosen once in ``main``.

Mixed precision is one flag: one autocast context and one gradient scaler, used the same way on
every device; with ``--amp none`` both are disabled and change nothing.
"""
import ctypes
import importlib.util
import os
import shutil
from typing import NamedTuple

import torch

from errors import InputError

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision(NamedTuple):
    autocast: torch.autocast
    scaler: torch.amp.GradScaler
    memory_format: torch.memory_format


def resolve_device(name=None):
    """``name`` (e.g. 'cpu', 'cuda:1'), or CUDA when available and the CPU otherwise."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise InputError(f"--device {name}: not a device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return device


def amp_name(device, amp=None):
    """``--amp`` as given, or its default for ``device``: bf16 on CUDA, none elsewhere."""
    return amp or ("bf16" if device.type == "cuda" else "none")


def resolve_precision(device, amp=None):
    """``--amp`` (default: ``amp_name``) as a ``Precision``, with channels_last activations (faster convolutions on
    CUDA and, by 8 % for a ResNet-18 step measured here, on the CPU)."""
    amp = amp_name(device, amp)
    dtype = AMP_DTYPES[amp]
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    return Precision(autocast, scaler, torch.channels_last)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory():
    """``--cpu-allocator keep``: serve every allocation from the process heap and keep what is freed there, instead
    of glibc's default of mapping each block above 32 MB afresh from the OS and returning it when freed.

    PyTorch's CPU allocator has no cache of its own: a step at 256 px maps and unmaps each large activation, its
    gradient and the augmented batch, and the kernel zero-fills every page on first touch (49,152 page faults for
    one 256-image batch). Kept, a ResNet-18 step at 256 px, batch 32, took 1.42 s instead of 1.90 s on 2 cores,
    for a peak resident memory of 2.67 GB instead of 2.04 GB; at 64 px nothing changed (``benchmarks/RESULTS.md``).
    Returns whether it applied: glibc only (Linux), a no-op elsewhere. It lasts as long as the process.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc: macOS, Windows, musl
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def check_compiler(device):
    """Fail before training, not at the first step, when ``--compile`` cannot build kernels for ``device``:
    TorchInductor writes C++ for the CPU and Triton for CUDA."""
    if device.type == "cpu" and not any(shutil.which(cc) for cc in (os.environ.get("CXX"), "g++", "c++", "clang++")
                                        if cc):
        raise InputError("--compile on the CPU needs a C++ compiler (g++ or clang++, or set CXX): install one, "
                         "or train without --compile")
    if device.type == "cpu" and not cpu_simd_for_compile():
        raise InputError("--compile on the CPU needs a SIMD instruction set for TorchInductor's kernels (AVX2, "
                         "AVX-512, NEON, ...): there is none here, or ATEN_CPU_CAPABILITY=default turns them off, and "
                         "without one PyTorch cannot compile BatchNorm's training reductions; train without --compile")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise InputError("--compile on CUDA needs the triton package (pip install triton), or train without --compile")


def cpu_simd_for_compile():
    """Whether TorchInductor has a vector instruction set to write the CPU kernels for (its scalar fallback emits
    vector types for Welford reductions and does not compile, PyTorch 2.14)."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:  # another PyTorch: its compiler will say
        return True
    return bool(pick_vec_isa())


def compile_network(model, memory=None):
    """``--compile``: the training forward and backward of ``model`` through ``torch.compile``, and the networks of
    ``memory`` (MU's key encoder) compiled in place by its ``compile`` (``nn.Module.compile`` keeps state-dict keys).

    What it returns is used for the training step alone: checkpoints, MU's EMA (the same parameters, in
    the same order) and the eager validation pass use the network itself. Shapes are static
    (``dynamic=False``): the full batch and the epoch's last, smaller one compile once each, into the fastest
    kernels for their size. Compiled kernels round differently from eager ones (within float32 tolerance:
    ``tests/test_compile.py``), so a run and its resumption should both use the flag or both not.
    """
    if memory is not None:
        memory.compile(dynamic=False)
    return torch.compile(model, dynamic=False)
