"""Where the whole process's time goes: one SNCA-CE (MB) run under cProfile, split into its parts, and the
interpreter's exit timed apart (after the last line of Python, which a profile cannot see).

    python benchmarks/where_time_goes.py --data DIR --dataset RSSCN7 --imgEXT jpg

The run has `benchmarks/run.py --only whole`'s flags (ResNet-18 from scratch, 64 px, -b 64, 4 epochs). The profiler
slows Python-heavy parts (imports most), not the network's kernels: read the parts against each other. Prints a
Markdown table and appends it, with the machine and the command, to benchmarks/RESULTS.md.
"""
import argparse
import os
import pstats
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from run import WHOLE_FLAGS, machine  # noqa: E402

# (part, file ending, function name): the function's cumulative time in the profile. Nested parts (the
# forward and backward passes are inside the training epochs) are indented.
PARTS = (
    ("imports (lib.training.program: torch, torchvision, ...)", "lib/training/program.py", "<module>"),
    ("file check of every image", "lib/training/data.py", "file_check"),
    ("decoding the training and validation images once", "datasets/cache.py", "decoded_images"),
    ("training epochs", "lib/training/loop.py", "train_one_epoch"),
    ("  network forward (training and validation)", "models/embedding_net.py", "forward"),
    ("  network backward", "~", "<method 'run_backward' of 'torch._C._EngineBase' objects>"),
    ("  SGD step", "torch/optim/sgd.py", "step"),
    ("  augmentation", "datasets/augment.py", "train_augment"),
    ("  SNCA loss", "lib/losses/snca.py", "snca"),
    ("  memory bank update", "lib/memories/bank.py", "step"),
    ("validation (embedding the validation split, kNN)", "lib/training/loop.py", "validate"),
    ("checkpoints (last.pt written, best.pt linked)", "lib/training/checkpoint.py", "save_checkpoint"),
    ("", "lib/training/checkpoint.py", "link_checkpoint"),
    ("TensorBoard and metrics.jsonl", "lib/training/run.py", "log_epoch"),
    ("learning-curve plot at the end", "lib/training/run.py", "close"),
)
EXIT_PROBE = "import torch, torchvision, time{freeze}; print(time.time(), flush=True)"


def cumulative(stats, path_end, name):
    found = [ct for (path, _, func), (_, _, _, ct, _) in stats.stats.items()
             if func == name and path.replace(os.sep, "/").endswith(path_end)]
    if not found:
        sys.exit(f"error: {path_end}:{name} is not in the profile: the code moved, update PARTS")
    return sum(found)


def profile_run(data, dataset, ext, flags=WHOLE_FLAGS):
    """{part: seconds} of one profiled MB run with ``flags``, and the profile's total seconds."""
    with tempfile.TemporaryDirectory() as out:
        profile = os.path.join(out, "run.prof")
        command = [sys.executable, "-m", "cProfile", "-o", profile, os.path.join(ROOT, "train_SNCA_CE", "main.py"),
                   "--pretrained", "none", "--device", "cpu", "--data", data, "--dataset", dataset, "--imgEXT", ext,
                   *flags, "--out", out, "--run-name", "profiled"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        stats = pstats.Stats(profile)
    times = {}
    for part, path_end, name in PARTS:
        label = part or list(times)[-1]  # an empty part adds to the one before
        times[label] = times.get(label, 0.0) + cumulative(stats, path_end, name)
    return times, stats.total_tt


def exit_seconds(freeze, rounds=5):
    """Median seconds from a process's last line to its exit, after importing torch and torchvision."""
    code = EXIT_PROBE.format(freeze=", gc; gc.freeze()" if freeze else "")
    seconds = []
    for _ in range(rounds):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds.append(time.time() - float(done.stdout.split()[-1]))
    return float(np.median(seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="DIR", help="folder holding --dataset")
    parser.add_argument("--dataset", default="RSSCN7")
    parser.add_argument("--imgEXT", default="jpg")
    args = parser.parse_args()
    times, total = profile_run(args.data, args.dataset, args.imgEXT)
    plain, frozen = exit_seconds(False), exit_seconds(True)
    lines = [f"\n## {time.strftime('%Y-%m-%d %H:%M')} — where the whole process's time goes (MB, under cProfile)\n",
             f"Machine: {machine(torch.device('cpu'))}.  ",
             f"Command: `{shlex.join(['python', *sys.argv])}`\n",
             f"| part ({args.dataset}, {' '.join(WHOLE_FLAGS)}) | seconds | share of the profiled {total:.1f} s |",
             "| --- | --- | --- |",
             *[f"| {part} | {seconds:.2f} | {100 * seconds / total:.1f} % |" for part, seconds in times.items()],
             f"| the exit after the last line, torch and torchvision imported (median of 5, not profiled) | "
             f"{plain:.2f} | gc.freeze() first: {frozen:.2f} s |"]
    with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
