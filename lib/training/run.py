"""The run folder: arguments, splits, per-epoch metrics (JSON lines and TensorBoard), checkpoints.

<out>/<run-name>/
    args.json           all arguments, git commit, command line: written once, when the run starts
    history.jsonl       one line per start and resume: time, command, git commit, host, the flags it changed
    splits/             train.txt, val.txt, test.txt (relative path and label per line), classes.txt
    dataset_check.json  the start-up check of the dataset's files (datasets/check.py)
    metrics.jsonl       one JSON object per epoch
    learning_curve.png  losses and validation kNN accuracy per epoch, drawn when the run ends or stops
    tb/                 TensorBoard events (train/*, val/*)
    checkpoints/        last.pt, best.pt
"""
import json
import os
import shlex
import socket
import subprocess
import sys
import time

from datasets.folder import SPLIT_NAMES
from errors import InputError
from lib.distributed.ranks import on_main
from lib.training.resume import current_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNRECORDED = ("resume", "out", "run_name")  # where the run was found, not how it runs: history omits them


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_folder(args):
    """The folder of this run: the resumed checkpoint's, or a new ``<out>/<run-name>`` that must not exist."""
    if args.resume:
        return os.path.dirname(os.path.dirname(os.path.abspath(args.resume)))
    name = args.run_name or time.strftime("%Y%m%d-%H%M%S-") + f"snca-ce-{args.memory}"
    folder = os.path.join(args.out, name)
    if os.path.exists(folder):
        raise InputError(f"run folder {folder} already exists: choose another --run-name, or --resume its checkpoint")
    return folder


class RunLog:
    """Writes everything a run records. On resume after ``done_epochs``, later epochs' metrics are dropped.

    Epochs are counted from 1 in metrics.jsonl and TensorBoard (epoch 1 is the first one trained).
    """

    def __init__(self, folder, done_epochs=0):
        self.folder = folder
        self.checkpoints = os.path.join(folder, "checkpoints")
        os.makedirs(self.checkpoints, exist_ok=True)
        self.metrics_path = os.path.join(folder, "metrics.jsonl")
        kept = [m for m in self.read_metrics() if m["epoch"] <= done_epochs]
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in kept)
        self.done_epochs, self._tb = done_epochs, None

    @property
    def tb(self):
        """The TensorBoard writer, made at the first scalar: its import (~0.5 s) is not paid before training."""
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.folder, "tb"), purge_step=self.done_epochs + 1)
        return self._tb

    def read_metrics(self):
        if not os.path.exists(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def write_args(self, args, **extra):
        record = {**vars(args), **extra, "git_commit": git_commit(), "command": command_line()}
        with open(os.path.join(self.folder, "args.json"), "x") as f:  # "x": never over an existing record
            json.dump(record, f, indent=2)

    def append_history(self, args, resumed=None, **facts):
        """One line in history.jsonl for this start (``resumed`` None) or resume of the run: the flags changed
        since the checkpoint as {flag: [before, now]}, and where training continues."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": "resume" if resumed else "start",
                  "command": command_line(), "git_commit": git_commit(), "host": socket.gethostname(), **facts}
        if resumed:
            before = current_names(resumed["args"])
            record["changed"] = {k: [before.get(k), v] for k, v in vars(args).items()
                                 if k not in UNRECORDED and before.get(k) != v}
            record["from"] = {"epoch": resumed["epoch"], "step": resumed["step"]}
        with open(os.path.join(self.folder, "history.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_json(self, name, record):
        with open(os.path.join(self.folder, name), "w") as f:
            json.dump(record, f, indent=2)

    def write_splits(self, splits, root):
        folder = os.path.join(self.folder, "splits")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "classes.txt"), "w") as f:
            f.writelines(f"{c}\n" for c in splits["classes"])
        for name in SPLIT_NAMES:
            with open(os.path.join(folder, f"{name}.txt"), "w") as f:
                f.writelines(f"{os.path.relpath(p, root)} {label}\n" for p, label in splits[name])

    def log_epoch(self, metrics, scalars):
        """Append ``metrics`` to metrics.jsonl; ``scalars`` maps TensorBoard tags to metric keys (absent or
        None ones are skipped)."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        for tag, key in scalars.items():
            if metrics.get(key) is not None:
                self.tb.add_scalar(tag, metrics[key], metrics["epoch"])
        self.tb.flush()

    def close(self):
        """Flush TensorBoard and draw ``learning_curve.png`` from metrics.jsonl."""
        if self._tb is not None:
            self._tb.close()
        if metrics := self.read_metrics():
            from lib.eval import plots  # matplotlib (~0.6 s to import) only when the curve is drawn

            plots.save(plots.learning_curve(metrics, os.path.basename(os.path.normpath(self.folder))),
                       os.path.join(self.folder, "learning_curve.png"))


def open_run_folder(args, dist, start_epoch, splits, report, root, resumed=None, **facts):
    """The run folder (rank 0's name, the same on every rank: the default is a timestamp) and, on rank 0, its
    RunLog (None elsewhere). A new run writes its arguments, split and dataset check; a resumed one (``resumed``:
    its checkpoint) keeps them and says where it continues. Both add a line to history.jsonl."""
    folder = on_main(dist, run_folder, args)
    if not dist.is_main:
        return folder, None
    log = RunLog(folder, done_epochs=start_epoch)
    if resumed is None:
        log.write_args(args, **facts)
        log.write_splits(splits, root)
        log.write_json("dataset_check.json", report)
    else:
        print(resume_line(args, resumed))
    log.append_history(args, resumed, **facts)
    return folder, log


def resume_line(args, checkpoint):
    """Where a resumed run continues: after its last completed epoch, or inside the next one at a step."""
    epoch, step = checkpoint["epoch"], checkpoint["step"]
    if epoch >= args.epochs:
        return f"resumed {args.resume}: {epoch} epochs done, none left of --epochs {args.epochs}"
    where = f"epoch {epoch + 1}/{args.epochs}"
    where = f"at step {step + 1} of {where}" if step else f"with {where}"
    return f"resumed {args.resume}: {epoch} epochs done, continuing {where}"


def command_line():
    return shlex.join([sys.executable, *sys.argv])
