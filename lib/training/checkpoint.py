"""Checkpoints: state dicts and plain values only, written atomically, loaded with ``weights_only=True``."""
import glob
import os
import shutil

import torch

from errors import InputError, load_state  # noqa: F401 -- load_state: also read from here by callers
from lib.training.utils import rng_state, set_rng_state

# Arguments that fix the shapes or the meaning of the saved state: a resumed run must agree on them.
MUST_MATCH = ("memory", "method", "model", "dim", "dataset", "image_size", "bands", "split")
ASSUMED = {"split": "reference"}  # what a checkpoint saved before an argument existed was trained with


def save_checkpoint(path, state):
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any moment leaves either the old or the new checkpoint, never a torn one.
    """
    _write_atomically(path, lambda f: torch.save(state, f))


def link_checkpoint(source, path):
    """``path`` becomes the checkpoint just written at ``source`` (best.pt <- last.pt), atomically: a hard link,
    so the bytes are not written a second time, or a copy where the file system has none. The next
    ``save_checkpoint(source, ...)`` renames a new file over ``source``, so ``path`` keeps these bytes."""
    tmp = f"{path}.tmp"
    if os.path.exists(tmp):  # left by a crash: os.link does not replace it
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FAT file systems)
        with open(source, "rb") as src:
            return _write_atomically(path, lambda f: shutil.copyfileobj(src, f))
    os.replace(tmp, path)
    _sync_folder(path)


def _write_atomically(path, write):
    """``write(file)`` into ``path``.tmp, fsync, rename over ``path``, fsync the folder; a failure removes the
    torn temporary file (a full disk, an interrupt) and leaves ``path`` as it was."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    _sync_folder(path)


def _sync_folder(path):
    """fsync the folder of ``path``: its new name survives a crash."""
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def resolve_resume(resume, out, run_name=None):
    """The checkpoint file meant by ``--resume``: a file, a run folder (its ``checkpoints/last.pt``), or
    ``auto``, the newest ``last.pt`` of ``<out>/<run-name>`` (of any run under ``out`` without a name)."""
    if resume == "auto":
        pattern = os.path.join(out, glob.escape(run_name) if run_name else "*", "checkpoints", "last.pt")
        found = glob.glob(pattern)
        if not found:
            raise InputError(f"--resume auto: no checkpoint matches {pattern}")
        return max(found, key=os.path.getmtime)
    if os.path.isdir(resume):
        return os.path.join(resume, "checkpoints", "last.pt")
    return resume


def check_compatible(checkpoint, args, num_train, num_classes):
    """Refuse, in one line, a checkpoint whose configuration differs from this run's."""
    saved = dict(ASSUMED | checkpoint["args"], num_train=checkpoint["num_train"], num_classes=checkpoint["num_classes"])
    ours = dict(ASSUMED | vars(args), num_train=num_train, num_classes=num_classes)
    for key in (*MUST_MATCH, "num_train", "num_classes"):
        if saved.get(key) != ours.get(key):
            raise InputError(f"--resume: the checkpoint has {key}={saved.get(key)!r}, this run {key}={ours.get(key)!r}")


def training_state(model, memory, optimizer, scaler, epoch, best_acc, args, num_train, num_classes, position=None,
                   world_size=1, device=None):
    """Everything a run needs to continue after ``epoch`` completed epochs (and, for a run stopped inside
    the next one, ``position`` = (steps done, loss sums, images seen)), as state dicts and plain values.

    The same for any number of ranks (``model`` is the bare network, not its DistributedDataParallel
    wrapper; the memory is whole), so a run resumes on another number of GPUs; ``world_size`` is a record. The
    memory entry is the memory variant's whole state (MU: with its key encoder), None for a method without one.
    """
    step, totals, seen = position or (0, None, 0)
    rng = rng_state()
    if device is not None and device.type == "cuda":  # the training device's own stream, whatever its index
        rng["device"] = torch.cuda.get_rng_state(device)
    return {"model": model.state_dict(), "memory": memory.state_dict() if memory is not None else None,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "loss_sums": None if totals is None else totals.cpu(), "seen": seen,
            "best_acc": best_acc, "args": vars(args), "num_train": num_train, "num_classes": num_classes,
            "rng": rng, "world_size": world_size}


def restore_training_state(checkpoint, model, memory, optimizer, scaler, device):
    """The inverse of ``training_state``: returns (completed epochs, best accuracy, position or None).

    The random generators are not set here: a run reseeds them every epoch, and one resumed inside an
    epoch sets them after that epoch's seeding (``restore_rng``).
    """
    model.load_state_dict(checkpoint["model"])
    if memory is not None:
        try:
            memory.load_state_dict(memory_state(checkpoint))
        except RuntimeError as error:  # a memory of another kind or size
            reason = " ".join(str(error).split()[6:])[:300]  # after "Error(s) in loading state_dict for <class>:"
            raise InputError(f"--resume: the checkpoint's memory does not fit this run's ({reason})") from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])
    position = None
    if checkpoint["step"]:
        position = (checkpoint["step"], checkpoint["loss_sums"].to(device), checkpoint["seen"])
    return checkpoint["epoch"], checkpoint["best_acc"], position


def memory_state(checkpoint):
    """The checkpoint's memory entry. MU checkpoints written before the key encoder became part of the memory
    entry hold the bank under "memory" and the key encoder under "key_encoder": their keys are moved to where
    ``KeyEncoderMemory`` holds them (``bank.``, ``key_encoder.``), so those runs resume too."""
    if checkpoint.get("key_encoder") is None:
        return checkpoint["memory"]
    return {**{f"bank.{k}": v for k, v in checkpoint["memory"].items()},
            **{f"key_encoder.{k}": v for k, v in checkpoint["key_encoder"].items()}}


def restore_rng(checkpoint, device):
    """The generators as saved (by rank 0, for every rank); the training GPU continues the saved training GPU's
    stream even when its index differs (rank 3 on cuda:3 resuming what rank 0 saved on cuda:0)."""
    set_rng_state(checkpoint["rng"])
    if "device" in checkpoint["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["rng"]["device"], device)
