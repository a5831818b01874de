"""Benchmarks: our code against the reference approach (benchmarks/reference.py), side by side in one run.

    python benchmarks/run.py --data DIR --dataset RSSCN7          # CPU, on DIR/RSSCN7/<class>/*.jpg (any scene dataset)
    python benchmarks/run.py --data DIR --dataset RSSCN7 --quick  # smaller sizes, a minute or two
    python benchmarks/run.py --only knn loss                      # CPU, on generated tensors: no dataset needed
    python benchmarks/run.py --gpu                                # the GPU benchmarks (benchmarks/gpu.sh runs this)
    python benchmarks/run.py --only bands                         # N-band decode once, on 13-band GeoTIFFs it writes
    python benchmarks/run.py --only allocator                     # --cpu-allocator keep vs system, ResNet-18 steps

Prints a Markdown table and appends it, with the machine and the command, to benchmarks/RESULTS.md.
Every figure is wall-clock on this machine: compare ratios within one run only.
"""
import argparse
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository root

import reference  # noqa: E402

from datasets import TensorBatches, build_splits, decoded_images  # noqa: E402
from datasets.augment import BandPipeline, apply_params, draw_params, to_float, train_augment  # noqa: E402
from datasets.bands import band_input, band_statistics  # noqa: E402
from lib import chunked_snca_loss, knn_predict  # noqa: E402
from lib.cli.args import get_args_parser  # noqa: E402
from lib.eval import knn  # noqa: E402
from lib.losses import METHODS  # noqa: E402
from lib.memories import MEMORIES  # noqa: E402
from lib.memories.bank import MemoryBank  # noqa: E402
from lib.memories.key_encoder import KeyEncoder, KeyEncoderMemory  # noqa: E402
from lib.training.device import compile_network, keep_freed_memory, resolve_precision  # noqa: E402
from lib.training.loop import train_one_epoch, validate  # noqa: E402
from models import EmbeddingNet  # noqa: E402

NWPU_TRAIN, NWPU_VAL, NWPU_CLASSES = 22005, 3195, 45


def loss_of(args):
    """The run's loss, with its numbers, as lib.training.program builds it."""
    return METHODS[args.method].build(args)
ROWS = []


def figure(value):
    """Three significant digits, never in exponent form: 0.00123, 41.5, 1,180."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.3g}"


def row(name, ours, ref=None, unit="", better="higher", note=""):
    ratio = "" if not ref or not ours else f"{(ours / ref if better == 'higher' else ref / ours):.2f}x"
    ROWS.append((name, f"{figure(ours)} {unit}".strip(), "" if ref is None else f"{figure(ref)} {unit}".strip(), ratio,
                 note))
    print(f"{name}: ours {ours:,.4g} {unit}" + ("" if ref is None else f", reference {ref:,.4g} ({ratio})")
          + (f"  [{note}]" if note else ""), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU = torch.device("cpu")


def timed(fn, device=CPU, repeats=1):
    """Best wall-clock seconds of ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


# ---------------- data pipeline: decode and augment ----------------
def bench_data(samples, size, workers):
    ref_s, _ = timed(lambda: sum(len(x) for x, _, _ in reference.loader(samples, reference.train_transform(size),
                                                                          64, workers, shuffle=True)))
    decode_s, images = timed(lambda: decoded_images(samples, size, workers))
    batches = TensorBatches(images, [label for _, label in samples], 256, torch.device("cpu"), shuffle=True)
    n = len(samples)
    augment_s, _ = timed(lambda: [train_augment(x) for x, _, _ in batches], repeats=2)
    row(f"data, {size} px, {workers} workers: every epoch after the first (images/s)", n / augment_s, n / ref_s,
        note="decoded once, batched augmentation")
    row(f"data, {size} px, {workers} workers: first epoch, decode + augment (images/s)", n / (decode_s + augment_s),
        n / ref_s)


# ---------------- N-band (13-band uint16 GeoTIFF) decode once ----------------
def bench_bands(workers, count=2000, size=64, bands=13):
    """Decode-once throughput of EuroSAT-MS-like files (``count`` images, 64 px, 13 uint16 bands, written here
    with tifffile), kept at 64 px as EuroSAT is used (no resize), and of a tenth of them resized to 256 px (the
    kept array grows 16-fold); and one pass of the N-band training pipeline (standardise, flip, rot90) over the
    64 px images."""
    import tempfile

    import tifffile

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        samples = []
        for k in range(count):
            os.makedirs(os.path.join(root, f"c{k % 10}"), exist_ok=True)
            path = os.path.join(root, f"c{k % 10}", f"{k}.tif")
            tifffile.imwrite(path, rng.integers(0, 10000, (bands, size, size), dtype=np.uint16),
                             photometric="minisblack", planarconfig="separate")
            samples.append((path, k % 10))
        layout = band_input("all", "4,3,2", bands, "uint16")
        for target, part in ((256, samples[: count // 10]), (size, samples)):
            seconds, images = timed(lambda: decoded_images(part, target, workers, bands=layout))
            row(f"N-band decode once, {len(part)} x {bands}-band uint16 {size} px -> {target} px, {workers} workers "
                "(images/s)", len(part) / seconds,
                note=f"tifffile; kept as {str(images.dtype)[6:]}, {images.nbytes / 2**20:.0f} MiB")
        pipeline = BandPipeline(layout.with_stats(*band_statistics(images.split(256))), rot90=True)
        batches = TensorBatches(images, [label for _, label in samples], 256, CPU, shuffle=True)
        seconds, _ = timed(lambda: [pipeline.train(x) for x, _, _ in batches])
        row(f"N-band training pipeline, {bands} bands {size} px (images/s)", count / seconds,
            note="standardise, flip, rot90; CPU")


# ---------------- --cpu-allocator: a training step with freed memory kept or given back ----------------
def allocator_worker(allocator, size, batch, steps=6):
    """One fresh process: ``steps`` ResNet-18 training steps (forward, backward, SGD) at ``size`` px on random
    images, with ``allocator`` as the entry points apply it; prints the median of the steps after the first and
    the peak resident memory."""
    import resource

    import torchvision

    if allocator == "keep":
        keep_freed_memory()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=128).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        model(images).square().mean().backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    uint8 = torch.randint(0, 256, (256, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    augment = [timed(lambda: train_augment(uint8))[0] for _ in range(steps)]
    print(json.dumps({"step_s": float(np.median(seconds[1:])), "peak_mb": peak_mb,
                      "augment_s": float(np.median(augment[1:])) / len(uint8)}))


def bench_allocator(rounds=3):
    """``--cpu-allocator keep`` against ``system``: fresh processes taking turns, medians of ``rounds``."""
    for size, batch in ((256, 32), (64, 64)):
        out = {"keep": [], "system": []}
        for _ in range(rounds):
            for allocator in out:
                done = subprocess.run([sys.executable, __file__, "--allocator-worker", allocator, "--size", str(size),
                                       "--batch", str(batch)], capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.splitlines()[-1])
                out[allocator].append((result["step_s"], result["peak_mb"], 1 / result["augment_s"]))
        keep, system = (np.median(np.array(out[a]), axis=0) for a in ("keep", "system"))
        name = f"--cpu-allocator keep (ours) vs system (reference), {size} px"
        row(f"{name}: ResNet-18 training step, batch {batch} (s)", keep[0], system[0], "s", "lower",
            note=f"median of {rounds} processes")
        row(f"{name}: its peak resident memory (MB)", keep[1], system[1], "MB", "lower")
        row(f"{name}: augmentation of decoded images, batches of 256 (images/s)", keep[2], system[2],
            note="after the training steps")


# ---------------- kNN at NWPU size ----------------
def bench_knn(device, num_queries=NWPU_VAL, num_references=NWPU_TRAIN, classes=NWPU_CLASSES, rounds=7):
    """``knn_predict`` against scikit-learn's ``KNeighborsClassifier(10, weights="distance")``, fit + predict as a
    user calls it (its "auto" picks brute force above 15 dimensions), on unit-norm float32 embeddings of D = 128
    with class structure (each a class centre plus noise). The two take turns, median of ``rounds``."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(classes, 128, generator=g), dim=1)         # (C, 128)
    labels = torch.randint(0, classes, (num_references,), generator=g)                            # (N,)
    query_labels = torch.randint(0, classes, (num_queries,), generator=g)                         # (Q,)
    refs, queries = (torch.nn.functional.normalize(centres[y] + 0.08 * torch.randn(len(y), 128, generator=g), dim=1)
                     for y in (labels, query_labels))                                               # (N, 128), (Q, 128)
    name = f"kNN K=10, {num_queries:,} x {num_references:,}"
    if device.type == "cuda":
        ours_s, ours = timed(lambda: knn_predict(queries.to(device), refs.to(device), labels.to(device)), device, 3)
        row(f"{name} on the GPU (ms)", 1000 * ours_s, unit="ms", better="lower")
        return
    times, load = {"ours": [], "ours, torch's product": [], "scikit-learn": []}, os.getloadavg()[0]
    for _ in range(rounds):
        times["ours"].append(timed(lambda: knn_predict(queries, refs, labels))[0])
        times["ours, torch's product"].append(timed(lambda: torch_product_knn(queries, refs, labels))[0])
        times["scikit-learn"].append(timed(lambda: reference.sklearn_knn(queries, refs, labels))[0])
    ours, ref = knn_predict(queries, refs, labels), reference.sklearn_knn(queries, refs, labels)
    same = float((ours.numpy() == ref).mean())
    method = reference.KNeighborsClassifier(10, weights="distance").fit(refs.numpy(), labels.numpy())._fit_method
    median = {name: float(np.median(t)) for name, t in times.items()}
    row(f"{name}, D = 128, unit norm, {classes} classes (s)", median["ours"], median["scikit-learn"], "s", "lower",
        note=f"scikit-learn {method} fit + predict; median of {rounds}, taking turns; identical predictions: "
        f"{same:.4f}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    row(f"{name}, the product through torch (MKL), not numpy's BLAS (s)", median["ours, torch's product"],
        median["scikit-learn"], "s", "lower", note="lib.eval.knn.NUMPY_DTYPES emptied")


def torch_product_knn(queries, refs, labels):
    """``knn_predict`` with its CPU product through torch's addmm (MKL) instead of numpy's BLAS."""
    dtypes, knn.NUMPY_DTYPES = knn.NUMPY_DTYPES, ()
    try:
        return knn_predict(queries, refs, labels)
    finally:
        knn.NUMPY_DTYPES = dtypes


# ---------------- SNCA loss at large N: one subprocess per variant, for its peak memory ----------------
def memory_kb(field):
    """A field of /proc/self/status in kB: VmRSS (resident now), VmHWM (peak since the last reset)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def loss_worker(variant, n, batch=256, dim=128, temperature=0.05):
    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_(True)
    memory = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    labels, indices = torch.arange(n) % 45, torch.randperm(n, generator=g)[:batch]
    before = memory_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident size
        f.write("5")
    start = time.perf_counter()
    if variant == "reference":
        loss = reference.reference_snca_loss(features @ memory.T / temperature, indices, labels)
    else:
        loss = chunked_snca_loss(features, memory, indices, labels, temperature)
    loss.backward()
    seconds = time.perf_counter() - start
    extra_mb = (memory_kb("VmHWM") - before) / 1024
    print(json.dumps({"seconds": seconds, "extra_mb": extra_mb, "loss": loss.item()}))


def bench_loss(n):
    out = {}
    for variant in ("chunked", "reference"):
        done = subprocess.run([sys.executable, __file__, "--loss-worker", variant, "--n", str(n)], capture_output=True,
                              text=True, check=True)
        out[variant] = json.loads(done.stdout.splitlines()[-1])
    ours, ref = out["chunked"], out["reference"]
    same = abs(ours["loss"] - ref["loss"]) / abs(ref["loss"])
    row(f"SNCA loss fwd+bwd, N = {n:,}, B = 256, D = 128 (s)", ours["seconds"], ref["seconds"], "s", "lower",
        note=f"relative difference of the values {same:.1e}")
    row(f"SNCA loss fwd+bwd, N = {n:,}: peak extra memory (MB)", ours["extra_mb"], ref["extra_mb"], "MB", "lower")


# ---------------- one training epoch, ours against the reference-style loop ----------------
EPOCH_VARIANTS = ("ours", "ours-bf16", "ours-compile", "floor", "reference")


def bench_epoch(splits, size, workers, memory_kind, rounds=3):
    """A training epoch, and the validation after it, timed apart: ours does more validation work for MB
    (it logs the kNN against re-extracted training embeddings besides the bank's). Also ours with --amp bf16,
    ours with --compile (its first epoch, which compiles, apart), and the floor of any float32 eager epoch: the
    network's forward, backward and SGD step (and MU's key-encoder forward) alone, on the epoch's batch shapes,
    without data, loss or memory. The variants take turns, one epoch each per round, so that the load of the
    shared machine drifts over all of them alike; each figure is a variant's median over the rounds."""
    args = get_args_parser(memory_kind).parse_args(["--image-size", str(size)])
    epochs = {variant: epoch_variant(variant, splits, size, workers, memory_kind, args) for variant in EPOCH_VARIANTS}
    compile_s, _ = timed(epochs["ours-compile"][0])
    runs = {variant: [] for variant in EPOCH_VARIANTS}
    for _ in range(rounds):
        for variant, (train_epoch, validation) in epochs.items():
            runs[variant].append((timed(train_epoch)[0], timed(validation)[0]))
    times = {variant: np.median(np.array(r), axis=0) for variant, r in runs.items()}    # (train s, validation s)
    name = f"{memory_kind.upper()}, ResNet-18, {size} px, batch 256"
    reference_s = times["reference"][0]
    row(f"training epoch, {name} (s)", times["ours"][0], reference_s, "s", "lower",
        note=f"{len(splits['train'])} training images, median of {rounds}, "
        f"{times['ours'][0] / reference_s:.2f} of the reference's time")
    row(f"validation after it, {name} (s)", times["ours"][1], times["reference"][1], "s", "lower",
        note="ours: bank and re-extracted references" if memory_kind == "mb" else "re-extracted references")
    row(f"training epoch, {name}, ours with --amp bf16 (s)", times["ours-bf16"][0], reference_s, "s",
        "lower", note=f"not the reference's float32 numerics; {cpu_bf16()}")
    row(f"training epoch, {name}, ours with --compile (s)", times["ours-compile"][0], reference_s, "s", "lower",
        note=f"after compiling: its first epoch took {compile_s:.0f} s")
    row(f"floor: the network's float32 passes alone, {name} (s)", times["floor"][0], reference_s, "s", "lower",
        note=f"no data, loss or memory; {times['floor'][0] / reference_s:.2f} of the reference's time")


def cpu_bf16():
    """What this CPU offers bfloat16 matrix products: AMX, AVX-512 BF16, or neither (emulated in float32)."""
    flags = cpuinfo("flags").split()
    if "amx_bf16" in flags:
        return "this CPU has AMX-BF16"
    return "this CPU has AVX512-BF16, no AMX" if "avx512_bf16" in flags else "this CPU has no bfloat16 instructions"


def epoch_variant(variant, splits, size, workers, memory_kind, args):
    """(train one epoch, validate) closures of one variant, each with its own network, seeded alike."""
    device = torch.device("cpu")
    train, val = splits["train"], splits["val"]
    labels = torch.tensor([label for _, label in train])
    torch.manual_seed(0)
    precision = resolve_precision(device, "bf16" if variant == "ours-bf16" else "none")
    model = EmbeddingNet("resnet18", args.dim, len(splits["classes"]))
    if variant != "reference":
        model.to(memory_format=precision.memory_format)
    key_encoder = KeyEncoder(model) if memory_kind == "mu" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    memory = MemoryBank(labels, args.dim)
    # as lib.training.program builds it
    ours = KeyEncoderMemory(memory, key_encoder) if key_encoder is not None else memory
    if variant.startswith("ours"):
        train_images, val_images = (decoded_images(s, size, workers) for s in (train, val))
        batches = TensorBatches(train_images, labels, args.batch_size, device, shuffle=True)
        eval_batch = args.eval_batch_size or args.batch_size
        val_batches = TensorBatches(val_images, [label for _, label in val], eval_batch, device)
        eval_batches = TensorBatches(train_images, labels, eval_batch, device)
        step_model = compile_network(model, ours) if variant == "ours-compile" else model
        return (lambda: train_one_epoch(step_model, ours, batches, optimizer, loss_of(args), precision),
                lambda: validate(model, ours, val_batches, eval_batches, 10, precision))
    if variant == "floor":
        inputs = [(torch.randn(len(part), 3, size, size).contiguous(memory_format=precision.memory_format),
                   labels[part]) for part in torch.arange(len(train)).split(args.batch_size)]

        def floor_epoch():
            for images, target in inputs:
                loss = torch.nn.functional.cross_entropy(model(images)[1], target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if key_encoder is not None:
                    key_encoder(images)
        return floor_epoch, lambda: None
    train_loader = reference.loader(train, reference.train_transform(size), args.batch_size, workers, True)
    val_loader = reference.loader(val, reference.eval_transform(size), args.batch_size, workers)
    eval_loader = (reference.loader(train, reference.eval_transform(size), args.batch_size, workers)
                   if memory_kind == "mu" else None)
    encoder = key_encoder.encoder if key_encoder is not None else None
    return (lambda: reference.reference_train_epoch(model, memory.memory, labels, encoder, train_loader, optimizer),
            lambda: reference.reference_validate(model, memory.memory, labels, val_loader, eval_loader))


# ---------------- the whole process, as a user runs it: start-up, training, validation, checkpoints ----------------
WHOLE_FLAGS = ("--image-size", "64", "-b", "64", "--lr", "0.01", "--epochs", "4", "--num_workers", "2")


def run_process(command):
    """(wall seconds, CPU seconds, peak resident MB of the process) of one command, its output discarded."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"error: {shlex.join(command)} failed:\n{process.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def bench_whole(data, dataset, ext, rounds=3):
    """Our entry point against the authors' process (benchmarks/reference_main.py), 64 px, ResNet-18 from scratch,
    4 epochs, MB and MU, whole process from the command to its exit; the two take turns, median of ``rounds``."""
    root = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as out:
        data_flags = ["--data", data, "--dataset", dataset, "--imgEXT", ext, *WHOLE_FLAGS, "--out", out]
        for memory_kind, entry in (("mb", "train_SNCA_CE"), ("mu", "train_SNCA_CE_MC")):
            commands = {"ours": [sys.executable, os.path.join(root, entry, "main.py"), "--pretrained", "none",
                                 "--device", "cpu", *data_flags],
                        "reference": [sys.executable, os.path.join(HERE, "reference_main.py"), "--memory", memory_kind,
                                      *data_flags]}
            runs, startup = {name: [] for name in commands}, []
            for k in range(rounds):
                run_name = f"{memory_kind}-{k}"
                runs["ours"].append(run_process([*commands["ours"], "--run-name", run_name]))
                with open(os.path.join(out, run_name, "metrics.jsonl")) as f:  # the command to the first step
                    startup.append(json.loads(f.readline())["startup_s"])
                runs["reference"].append(run_process(commands["reference"]))
            ours, ref = (np.median(np.array(runs[name]), axis=0) for name in ("ours", "reference"))
            name = f"whole process, {memory_kind.upper()}, ResNet-18 from scratch, 64 px, -b 64, 4 epochs"
            note = f"median of {rounds}, taking turns; {ours[0] / ref[0]:.2f} of the reference's time"
            row(f"{name}: wall (s)", ours[0], ref[0], "s", "lower", note=note)
            row(f"{name}: CPU (s)", ours[1], ref[1], "s", "lower")
            row(f"{name}: peak resident memory (MB)", ours[2], ref[2], "MB", "lower")
            row(f"{name}: start-up, the command to the first training step (s)", float(np.median(startup)), unit="s",
                note="imports, file check, decoding, model: `startup_s` of metrics.jsonl, median")


# ---------------- GPU only ----------------
class GpuSizes(NamedTuple):
    """The GPU benchmarks' problem sizes: NWPU-RESISC45's by default; ``SMOKE``, toy ones with which
    ``tests/test_benchmarks.py`` runs the same code on the CPU, so that a session lent a GPU finds it working."""
    batch: int = 256
    image: int = 256
    steps: int = 30
    references: int = 1_000_000
    train: int = NWPU_TRAIN
    val: int = NWPU_VAL
    classes: int = NWPU_CLASSES
    archs: tuple = ("resnet18", "resnet50")
    band_images: int = 2048
    compile: bool = True


NWPU = GpuSizes()
SMOKE = GpuSizes(batch=8, image=32, steps=2, references=3000, train=40, val=12, classes=4, archs=("resnet18",),
                 band_images=24, compile=False)


def bench_gpu(device, sizes=NWPU):
    batch, px, steps = sizes.batch, sizes.image, sizes.steps
    images = torch.randint(0, 256, (batch, 3, px, px), dtype=torch.uint8, device=device)
    seconds, _ = timed(lambda: [train_augment(images) for _ in range(steps)], device, 2)
    params = draw_params(min(16, batch), CPU, torch.Generator().manual_seed(0))
    on_cpu = apply_params(to_float(images[:16].cpu()), params)
    on_gpu = apply_params(to_float(images[:16]), {name: value.to(device) for name, value in params.items()})
    difference = (on_gpu.cpu() - on_cpu).abs().max().item()
    row(f"batched augmentation on the GPU, {px} px (images/s)", steps * batch / seconds,
        note=f"same parameters: GPU = CPU to {difference:.1e}")
    bench_knn(device, sizes.val, sizes.train, sizes.classes)
    n = sizes.references
    refs, queries = torch.randn(n, 128, device=device), torch.randn(10_000, 128, device=device)
    ref_labels = torch.arange(n, device=device) % 45
    peak_mb, seconds = peak_memory(device, lambda: knn_predict(queries, refs, ref_labels))
    row(f"kNN K=10, 10,000 queries x {n:,} references on the GPU: peak extra memory (MB)", peak_mb, unit="MB",
        better="lower", note=f"{seconds:.2f} s")
    features = torch.nn.functional.normalize(torch.randn(batch, 128, device=device), dim=1).requires_grad_(True)
    bank = torch.nn.functional.normalize(torch.randn(n, 128, device=device), dim=1)
    bank_labels, indices = torch.arange(n, device=device) % 45, torch.randperm(n, device=device)[:batch]
    ours = peak_memory(device, lambda: chunked_snca_loss(features, bank, indices, bank_labels, 0.05).backward())
    ref = peak_memory(device, lambda: reference.reference_snca_loss(features @ bank.T / 0.05, indices, bank_labels)
                      .backward())
    name = f"SNCA loss fwd+bwd, N = {n:,}, B = {batch} on the GPU"
    row(f"{name} (ms)", 1000 * ours[1], 1000 * ref[1], "ms", "lower")
    row(f"{name}: peak extra memory (MB)", ours[0], ref[0], "MB", "lower")
    bench_bands_on_device(device, sizes)
    train_n, val_n = sizes.train, sizes.val
    store = torch.randint(0, 256, (train_n + val_n, 3, px, px), dtype=torch.uint8, device=device)
    labels = torch.arange(train_n + val_n) % sizes.classes
    head = slice(0, 3 * batch), slice(3 * batch, (3 + steps) * batch)  # three warm-up steps, then the timed ones
    warm, measured = (TensorBatches(store[part], labels[part], batch, device) for part in head)
    for arch, memory_kind in itertools.product(sizes.archs, ("mb", "mu")):
        args = get_args_parser(memory_kind).parse_args([])
        precision = resolve_precision(device, "bf16")
        model = EmbeddingNet(arch, args.dim, sizes.classes).to(device, memory_format=precision.memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
        # as lib.training.program does
        memory = MEMORIES[memory_kind].load().build(args, labels[:train_n], model, None).to(device)
        train_one_epoch(model, memory, warm, optimizer, loss_of(args), precision)
        seconds, _ = timed(lambda: train_one_epoch(model, memory, measured, optimizer, loss_of(args), precision),
                           device)
        row(f"training, {arch} {memory_kind.upper()}, {px} px, bf16, channels_last, augmentation included "
            "(images/s)", steps * batch / seconds)
        if arch == "resnet18":  # the same steps in float32 (--amp none, the paper scripts' default): bf16's saving
            fp32 = resolve_precision(device, "none")
            train_one_epoch(model, memory, warm, optimizer, loss_of(args), fp32)
            fp32_s, _ = timed(lambda: train_one_epoch(model, memory, measured, optimizer, loss_of(args), fp32), device)
            row(f"training, {arch} {memory_kind.upper()}, {px} px, float32 (cuDNN's default TF32 convolutions), "
                "channels_last, augmentation included (images/s)", steps * batch / fp32_s,
                note=f"bf16 is {fp32_s / seconds:.2f}x faster")
        if arch == "resnet18" and memory_kind == "mb" and sizes.compile:  # its compilation apart, then the steps
            compiled = compile_network(model)
            compile_s, _ = timed(lambda: train_one_epoch(compiled, memory, warm, optimizer, loss_of(args), precision),
                                 device)
            seconds, _ = timed(lambda: train_one_epoch(compiled, memory, measured, optimizer, loss_of(args), precision),
                               device)
            row(f"training, {arch} MB, {px} px, bf16, channels_last, --compile, augmentation included (images/s)",
                steps * batch / seconds, note=f"after {compile_s:.0f} s of compilation")
        if arch == "resnet18":
            train = TensorBatches(store[:train_n], labels[:train_n], batch, device, shuffle=True,
                                  generator=torch.Generator().manual_seed(0))
            val = TensorBatches(store[train_n:], labels[train_n:], 512, device)
            train_eval = TensorBatches(store[:train_n], labels[:train_n], 512, device)

            def epoch():
                train_one_epoch(model, memory, train, optimizer, loss_of(args), precision)
                return validate(model, memory, val, train_eval, 10, precision)
            seconds, _ = timed(epoch, device)
            row(f"NWPU-sized epoch ({train_n:,} + {val_n:,} generated images), {arch} {memory_kind.upper()}, "
                "validation included (s)", seconds, unit="s", better="lower")


def bench_bands_on_device(device, sizes, bands=13, size=64):
    """13-band uint16 images as a run keeps them on the device (``--cache device``: gathered there through their
    int16 view) and in pinned CPU memory (``--cache memory``): both give the CPU's batches bit for bit, and
    standardise alike; then N-band training steps (flip, rot90, a 13-channel ResNet-18, MB) on the device."""
    n, batch = sizes.band_images, sizes.batch
    images = torch.randint(0, 10000, (n, bands, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.int32).to(torch.uint16)                                  # (n, 13, S, S)
    labels = torch.arange(n) % 10
    layout = band_input("all", "4,3,2", bands, "uint16")
    pipeline = BandPipeline(layout.with_stats(*band_statistics(images.split(256))), rot90=True)
    on_device = images.to(device)
    kept, pinned, cpu = (TensorBatches(store, labels, batch, target)
                         for store, target in ((on_device, device), (images, device), (images, CPU)))
    worst = 0.0
    for (a, _, _), (b, _, _), (c, _, _) in zip(kept, pinned, cpu):
        same = [torch.equal(x.cpu().view(torch.int16), c.view(torch.int16)) for x in (a, b)]  # uint16 has no ==
        if not all(same):
            raise AssertionError(f"N-band uint16 batches on {device} differ from the CPU's (kept, pinned: {same})")
        standardised = pipeline.eval(c)
        worst = max(worst, ((pipeline.eval(a).cpu() - standardised).abs() / standardised.abs().clamp(min=1)).max()
                    .item())
    # (x - mean) / std: two correctly rounded float32 operations on either device, so at most 2 ulp apart
    if worst > 2 * torch.finfo(torch.float32).eps:
        raise AssertionError(f"N-band standardisation on {device} differs from the CPU's by {worst:.1e} relative")
    args = get_args_parser("mb").parse_args(["--bands", "all"])
    precision = resolve_precision(device, "bf16" if device.type == "cuda" else "none")
    model = EmbeddingNet("resnet18", args.dim, 10, in_channels=bands).to(device, memory_format=precision.memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    memory = MEMORIES["mb"].load().build(args, labels, model, None).to(device)
    train = TensorBatches(on_device, labels, batch, device, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    train.pipeline = pipeline
    train_one_epoch(model, memory, train, optimizer, loss_of(args), precision)
    seconds, _ = timed(lambda: train_one_epoch(model, memory, train, optimizer, loss_of(args), precision), device)
    row(f"N-band training, {n:,} x {bands}-band uint16 {size} px kept on the GPU, ResNet-18 MB, flip + rot90 "
        "(images/s)", n / seconds, note=f"batches = the CPU's bit for bit, kept and pinned; standardised to "
        f"{worst:.1e} relative")


def peak_memory(device, fn):
    """(peak extra GPU memory in MB, seconds) of ``fn()`` after one warm-up call; NaN memory off CUDA."""
    fn()
    if device.type != "cuda":
        return float("nan"), timed(fn, device)[0]
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    seconds, _ = timed(fn, device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20, seconds


def bench_reference_loader(samples, size, workers, passes=3):
    """The reference PIL pipeline's throughput once its workers run (the first pass, which starts them, is not
    timed)."""
    loader = torch.utils.data.DataLoader(reference.PILDataset(samples, reference.train_transform(size)),
                                         batch_size=64, shuffle=True, num_workers=workers, persistent_workers=True)
    sum(len(x) for x, _, _ in loader)
    seconds, count = timed(lambda: sum(len(x) for _ in range(passes) for x, _, _ in loader))
    row(f"reference PIL pipeline, {size} px, {workers} workers (images/s)", count / seconds,
        note=f"{len(samples)} images x {passes} passes, workers started")


# environment settings that change which kernels run: named in the results
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR",
                   "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS")


def cpuinfo(field):
    """The first ``field`` of /proc/cpuinfo ("model name", "flags"), or "" where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(field)), "")
    except OSError:
        return ""


VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512", "amx")  # flag prefixes worth naming


def vector_extensions():
    """The processor's SIMD and matrix extensions from /proc/cpuinfo's flags ("avx2 fma avx512f ..."), or "not
    listed" where /proc/cpuinfo has none (not Linux, or an ARM kernel's "Features")."""
    flags = [flag for flag in cpuinfo("flags").split() if flag.startswith(VECTOR_EXTENSIONS)]
    return " ".join(flags) or "not listed"


def machine(device):
    cpu = f"{cpuinfo('model name') or platform.processor()} ({vector_extensions()})"
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    forced = [f"{name}={os.environ[name]}" for name in KERNEL_SETTINGS if name in os.environ]
    kernels = f"PyTorch CPU kernels {torch.backends.cpu.get_cpu_capability()}" + (f" ({', '.join(forced)})" if forced
                                                                                  else "")
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; {kernels}; torch {torch.__version__}; "
            f"Python {platform.python_version()}")


def write_results(device, title):
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')} — {title}\n", f"Machine: {machine(device)}.  ",
             f"Command: `{shlex.join(['python', *sys.argv])}`\n", "| benchmark | ours | reference | speed-up | note |",
             "| --- | --- | --- | --- | --- |", *[f"| {' | '.join(r)} |" for r in ROWS]]
    with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description="Benchmarks against the reference approach.")
    parser.add_argument("--quick", action="store_true", help="smaller problems")
    parser.add_argument("--gpu", action="store_true", help="the GPU benchmarks")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="folder holding --dataset: needed by the CPU data and epoch benchmarks; on the GPU "
                        "it adds the reference PIL pipeline's row")
    parser.add_argument("--dataset", default="RSSCN7", help="scene dataset folder under --data")
    parser.add_argument("--imgEXT", default="jpg", help="its image extension")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=("data", "knn", "loss", "epoch", "bands", "whole", "allocator"),
                        help="CPU: run these benchmarks alone (default: all)")
    parser.add_argument("--loss-worker", choices=("reference", "chunked"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--allocator-worker", choices=("keep", "system"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loss_worker:
        return loss_worker(args.loss_worker, args.n)
    if args.allocator_worker:
        return allocator_worker(args.allocator_worker, args.size, args.batch)
    root = os.path.join(args.data, args.dataset) if args.data else None
    splits = build_splits(root, args.imgEXT) if root and os.path.isdir(root) else None
    if args.gpu:
        device = torch.device("cuda")
        if splits:
            bench_reference_loader(splits["train"], 256, args.workers)
        bench_gpu(device)
        return write_results(device, "GPU benchmarks")
    device = torch.device("cpu")
    only = set(args.only or ("data", "knn", "loss", "epoch", "bands", "whole", "allocator"))
    if splits is None and only & {"data", "epoch", "whole"}:
        sys.exit("error: the data and epoch benchmarks need a scene dataset: give --data DIR --dataset NAME "
                 f"(--imgEXT EXT), DIR/NAME/<class>/<image>.EXT{'; there is none at ' + root if root else ''}")
    if args.quick and splits:
        splits = {k: v[::4] if k != "classes" else v for k, v in splits.items()}
    if "data" in only:
        bench_data(splits["train"], 256, args.workers)
    if "knn" in only:
        bench_knn(device)
    if "loss" in only:
        bench_loss(100_000 if args.quick else 1_000_000)
    if "epoch" in only:
        for memory_kind in ("mb", "mu"):
            bench_epoch(splits, 64, args.workers, memory_kind, rounds=1 if args.quick else 3)
    if "bands" in only:
        bench_bands(args.workers, 500 if args.quick else 2000)
    if "allocator" in only:
        bench_allocator(1 if args.quick else 3)
    if "whole" in only:
        bench_whole(args.data, args.dataset, args.imgEXT, rounds=1 if args.quick else 3)
    write_results(device, "CPU benchmarks" + (" (--quick)" if args.quick else ""))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
