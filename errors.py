"""Bad user input: the one exception type, its one-line message, and the safe reading of a state-dict file the
user names (a checkpoint, trunk weights).

A top-level module so that ``datasets/``, ``models/`` and ``lib/`` all raise the same exception without importing
one another; entry points print it as a single line (``error: ...``) instead of a traceback.
"""
import os
import pickle


class InputError(Exception):
    """A problem with what the user gave us: a path, a flag, a file."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    An exception raised inside a DataLoader worker comes back with the worker's traceback in its
    message; the last line holds the original message.
    """
    text = str(error).strip()
    last = text.splitlines()[-1] if text else type(error).__name__
    return last.split(f"{InputError.__name__}: ", 1)[-1]


def load_state(path, flag="--resume", map_location="cpu"):
    """``torch.load(path, weights_only=True)``; any failure is one line naming ``flag`` and the file."""
    import torch  # here: the flags import this module, and --help answers without torch

    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        reason = str(error).splitlines()[0]
        if "Weights only load failed" in reason:
            reason = "it holds pickled Python objects, which are never loaded (weights_only=True)"
        raise InputError(f"{flag} {path}: not a loadable state dict ({reason})") from None
