"""Training-step and validation-kNN throughput of the current code, data already on the device.

Measures the model + loss + memory update of ``lib.train.train_one_epoch`` (the ceiling the data
pipeline has to feed) and ``lib.knn_predict`` at NWPU-RESISC45 size (N = 22,005 references,
Q = 3,195 queries, D = 128). Prints one Markdown row per configuration.

    python benchmarks/train_step.py --device cuda
    python benchmarks/train_step.py --device cpu --image-size 64 --steps 3 --archs resnet18
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from lib import KeyEncoder, Memory, knn_predict  # noqa: E402
from lib.args import get_args_parser  # noqa: E402
from lib.train import train_one_epoch  # noqa: E402
from models import EmbeddingNet  # noqa: E402

NWPU_TRAIN, NWPU_VAL, NWPU_CLASSES = 22005, 3195, 45


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_throughput(arch, memory_kind, device, batch, size, steps, warmup=3):
    args = get_args_parser(memory_kind).parse_args([])
    labels = torch.arange(NWPU_TRAIN) % NWPU_CLASSES
    model = EmbeddingNet(arch, args.dim, NWPU_CLASSES).to(device)
    memory = Memory(labels, args.dim).to(device)
    key_encoder = KeyEncoder(model) if memory_kind == "mu" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    images = torch.randn(batch, 3, size, size, device=device)
    indices = torch.randperm(NWPU_TRAIN, device=device).split(batch)[: warmup + steps]
    batches = [(images, memory.labels[i], i) for i in indices]
    train_one_epoch(model, memory, key_encoder, batches[:warmup], optimizer, device, args, 0.5)
    sync(device)
    start = time.perf_counter()
    train_one_epoch(model, memory, key_encoder, batches[warmup:], optimizer, device, args, 0.5)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def knn_seconds(device, repeats=5):
    refs = torch.nn.functional.normalize(torch.randn(NWPU_TRAIN, 128, device=device), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(NWPU_VAL, 128, device=device), dim=1)
    labels = torch.arange(NWPU_TRAIN, device=device) % NWPU_CLASSES
    knn_predict(queries, refs, labels)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        knn_predict(queries, refs, labels)
    sync(device)
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("-b", "--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}, {args.image_size} px, fp32, "
          f"N = {NWPU_TRAIN}")
    print("| configuration | training images/s (data on device) |\n| --- | --- |")
    for arch in args.archs:
        for memory_kind in ("mb", "mu"):
            rate = step_throughput(arch, memory_kind, device, args.batch_size, args.image_size, args.steps)
            print(f"| {arch} {memory_kind.upper()} | {rate:,.0f} |", flush=True)
    print(f"kNN (K=10) at NWPU size, {NWPU_VAL} x {NWPU_TRAIN}: {1000 * knn_seconds(device):.1f} ms")


if __name__ == "__main__":
    main()
