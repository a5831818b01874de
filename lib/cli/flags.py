"""Building blocks of the command lines of the entry points and the scripts: numbers checked against their
range while parsing, errors on one line, help that states each default once; then the checks of the parsed
flags: against each other (``check_companions``), the paths and the dataset folder (``check_paths``)."""
import argparse
import math
import os

from datasets.presets import PRESETS, bands_of
from errors import InputError

MAX_WORKERS = 4  # default decoding processes, fewer on a machine with fewer cores
REFERENCE_DATASET = "UCMerced_LandUse"  # the reference scripts' default dataset, used with --data alone


class Range:
    """An argparse ``type``: a finite number of ``kind`` within the bounds; anything else is refused in one line
    naming the range (``must be > 0, got 0``)."""

    def __init__(self, kind, low=None, high=None, low_open=False, high_open=False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        if low is not None and high is not None:
            text = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        else:
            text = f"{'>' if low_open else '>='} {low}" if low is not None else f"{'<' if high_open else '<='} {high}"
        self.text = f"an integer {text}" if kind is int else text
        self.__name__ = self.text  # argparse names a type by it

    def __call__(self, text):
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not self.holds(value):
            raise argparse.ArgumentTypeError(f"must be {self.text}, got {text}")
        return value

    def holds(self, value):
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


POSITIVE = Range(float, low=0, low_open=True)
NON_NEGATIVE = Range(float, low=0)
MOMENTUM = Range(float, 0, 1, high_open=True)
COUNT = Range(int, low=1)
NON_NEGATIVE_INT = Range(int, low=0)
SEED = Range(int, 0, 2**32 - 1)  # numpy's seed range
FRACTION = Range(float, 0, 1, low_open=True, high_open=True)  # --split unseen's shares: int(f x n) of n


def default_workers():
    """``MAX_WORKERS`` decoding processes, or as many as this process may use cores, if fewer."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_WORKERS, cores)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to a flag's help, unless the help states its default itself, the default is None
    (the help says what happens then) or the flag is a switch."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the errors on one line, ``error: argument --lr: must be > 0, got 0`` (under torchrun, rank 0
    alone says it), exit status 2, and ``HelpFormatter``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)


def band_list(text):
    """``--bands``' type, ``datasets.bands.parse_band_list``, imported (with torch) only when the flag is given."""
    from datasets.bands import parse_band_list

    return parse_band_list(text)


def rgb_bands(text):
    """``--rgb-bands``' type, ``datasets.bands.parse_rgb_bands``, imported only when the flag is given."""
    from datasets.bands import parse_rgb_bands

    return parse_rgb_bands(text)


def check_data(data, dataset):
    """``--data`` is a folder; when ``<data>/<dataset>`` is missing and ``data`` looks like a dataset itself (its
    name is the dataset's, or it holds class folders of files), the line says to give its parent."""
    if data is None:
        return
    if not os.path.isdir(data):
        raise InputError(f"--data {data}: no such folder")
    dataset = dataset or REFERENCE_DATASET
    if dataset == "synthetic" or os.path.isdir(os.path.join(data, dataset)):
        return
    parent, name = os.path.split(os.path.abspath(data))
    with os.scandir(data) as entries:
        classes = [e.path for e in entries if e.is_dir()]
    if name == dataset or name in PRESETS or any(any(e.is_file() for e in os.scandir(c)) for c in classes[:5]):
        raise InputError(f"--data {data} is the dataset folder itself (no {dataset} inside): --data is the folder "
                         f"holding it; try --data {parent} --dataset {name}")


def add_checkpoint_arguments(parser):
    """The trained run of scripts/evaluate.py and scripts/retrieve.py, given alike to both: ``RUN_DIR`` with
    ``--checkpoint best|last``, or ``--checkpoint`` a checkpoint file (or a run folder) alone."""
    parser.add_argument("target", nargs="?", metavar="RUN_DIR", help="a run folder, or a checkpoint file in one")
    parser.add_argument("--checkpoint", default="best", metavar="{best,last,PATH}",
                        help="best or last: that checkpoint of RUN_DIR; PATH: a checkpoint file, or a run folder "
                        "(its best), instead of RUN_DIR")


def checkpoint_target(args, parser):
    """(run folder or checkpoint file, which checkpoint of a folder) from ``add_checkpoint_arguments``' flags."""
    if args.checkpoint in ("best", "last"):
        if args.target is None:
            parser.error("give the trained run: RUN_DIR, or --checkpoint PATH")
        return args.target, args.checkpoint
    if args.target is not None:
        parser.error(f"give the trained run once: RUN_DIR {args.target} or --checkpoint {args.checkpoint}, not both")
    return args.checkpoint, "best"


def check_companions(args, given):
    """A flag that means something only beside another is refused when given without it, not ignored."""
    for dest, flag in (("rgb_bands", "--rgb-bands"), ("rot90", "--rot90")):
        if dest in given and not bands_of(args.dataset, args.bands):
            raise InputError(f"{flag} applies to N-band images: give --bands (or an N-band --dataset preset), or "
                             f"leave {flag} out")
    for dest, flag in (("seen_fraction", "--seen-fraction"), ("train_fraction", "--train-fraction")):
        if dest in given and args.split != "unseen":
            raise InputError(f"{flag} applies to --split unseen: give --split unseen, or leave {flag} out")


def check_paths(args):
    """The paths given, before anything is written: each exists as the kind it must be (``--weights`` only for a
    new run), a new run's folder does not, and ``--data`` is the folder holding the dataset, not the dataset itself."""
    if args.weights is not None and not args.resume and not os.path.isfile(args.weights):  # a resume loads none
        raise InputError(f"--weights {args.weights}: no such file")
    for flag, path in (("--out", args.out), ("--cache-dir", args.cache_dir)):
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            raise InputError(f"{flag} {path} is a file: give a folder")
    if args.run_name is not None and (os.path.basename(args.run_name) != args.run_name or args.run_name in (".", "..")):
        raise InputError(f"--run-name {args.run_name}: a name, not a path (the run folder is <--out>/<name>)")
    if not args.resume and args.run_name and os.path.exists(os.path.join(args.out, args.run_name)):
        raise InputError(f"run folder {os.path.join(args.out, args.run_name)} already exists: choose another "
                         "--run-name, or --resume it")
    check_data(args.data, args.dataset)
