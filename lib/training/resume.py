"""What a resume takes from its checkpoint, and what it may change: ``--resume`` continues an experiment, so every
flag that defines it comes from the checkpoint when not given, and a given one that differs is refused, before
anything is written. Torch is imported only when a checkpoint is read."""
import argparse

from errors import InputError
from lib.memories import MEMORIES

# Flags that belong to one invocation, not to the run: a resume never takes them from the checkpoint.
LOCAL = ("resume", "out", "run_name", "device", "num_workers", "cache", "cache_dir", "compile", "cpu_allocator")
# Flags a resume may change, recorded in the run's history.jsonl; every other flag defines the experiment (the
# split and its fractions and seed, the bands, --rot90, the memory and its flags, --key-bn, ...): a resume takes
# it from the checkpoint, and refuses a value that differs. --sync-bn belongs to the process layout, like the
# number of ranks a run may resume on: with it, any number of ranks normalises as the one process did.
MAY_CHANGE = (*LOCAL, "epochs", "data", "check_images", "eval_batch_size", "knn_extracted_every", "sync_bn")
# Flags renamed since a run could be written: {recorded name: the name now}. Such a run resumes under the new one.
RENAMED = {"ema_momentum": "key_momentum"}


def current_names(recorded):
    """A run's recorded flags (its checkpoint's or args.json's) under today's names."""
    return {RENAMED.get(dest, dest): value for dest, value in recorded.items()}


def given_flags(probe, argv=None):
    """The destinations of the flags given on the command line, read with ``probe``, a fresh parser of that command
    line whose defaults are suppressed here."""
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv))) - set(probe._defaults)


def flag_names(parser):
    """{destination: the flag's long name} (``batch_size``: ``--batch-size``)."""
    return {action.dest: next((o for o in action.option_strings if o.startswith("--")), action.dest)
            for action in parser._actions if action.option_strings}


def resume_experiment(args, entry_point, given, names):
    """On ``--resume``: every flag the checkpoint recorded and not given is taken from it (those of ``LOCAL``
    excepted); a given flag that defines the experiment and differs is refused, all of them in one line."""
    from lib.training.checkpoint import load_state, resolve_resume  # torch: only when resuming

    args.resume = resolve_resume(args.resume, args.out, args.run_name)
    saved = current_names(load_state(args.resume)["args"])
    trained = MEMORIES[saved.get("memory", entry_point)]
    if trained.entry_point != entry_point:
        script = "train_SNCA_CE/main.py" if trained.entry_point == "mb" else "train_SNCA_CE_MC/main.py"
        raise InputError(f"--resume {args.resume}: a run of {trained.title.split(':')[0]}; resume it with {script}")
    differ = []
    for dest, value in saved.items():
        if dest not in names or dest in LOCAL:
            continue
        if dest not in given:
            setattr(args, dest, value)
        elif dest not in MAY_CHANGE and getattr(args, dest) != value:
            differ.append(f"{names[dest]} {shown(value)} (given {shown(getattr(args, dest))})")
    if differ:
        raise InputError(f"--resume {args.resume}: the run was trained with {', '.join(differ)}; leave these flags "
                         "out to continue it, or train a new run with them")


def shown(value):
    return ("on" if value else "off") if isinstance(value, bool) else str(value)
