"""What the command line knows of each method and memory: its name, its line of ``--help``, its own flags and the
entry point that offers it (a memory: also where its class lives). Declared here, without torch, so that ``--help``
and bad flags answer before torch is imported; ``lib.methods`` takes the methods' help and flags and the memories'
classes from these tables.
"""
from collections.abc import Callable
from typing import NamedTuple

from lib.flags import COUNT, MOMENTUM, NON_NEGATIVE


def no_arguments(group):
    """A method or memory without flags of its own."""


class MemoryOptions(NamedTuple):
    variant: str                # its lib.memory.MemoryVariant class, as module.Class (imported by lib.methods)
    title: str                  # one line for --help
    entry_point: str            # the entry point whose --memory offers it
    add_arguments: Callable     # its own flags, in its --help group


class MethodOptions(NamedTuple):
    help: str
    uses_memory: bool           # the metric term is SNCA against the entry point's --memory
    add_arguments: Callable = no_arguments


def memory_bank_arguments(group):
    group.add_argument("--memory-momentum", "--m-mementum", type=MOMENTUM, default=0.5,
                       help="memory-bank momentum until epoch 80 (then 0.8, and 0.9 from 120); paper: 0.5")


def momentum_update_arguments(group):
    group.add_argument("--ema-momentum", type=MOMENTUM, default=0.999, help="key-encoder EMA momentum; paper: 0.999")
    group.add_argument("--key-bn", default="sync", choices=("sync", "shuffle"),
                       help="under torchrun, the key encoder's BatchNorm batch: sync, the whole global batch "
                       "(the paper's one-GPU setting, exactly); shuffle, MoCo's shuffle-BN across ranks. "
                       "One process: the whole batch either way")


def cross_batch_memory_arguments(group):
    group.add_argument("--queue-size", type=COUNT, default=8192,
                       help="--memory xbm: embeddings in the queue, M (not in the SNCA-CE paper)")


def dcnn_arguments(group):
    group.add_argument("--dcnn-tau", type=NON_NEGATIVE, default=0.44,
                       help="D-CNN distance threshold tau; Cheng et al.: 0.44")
    group.add_argument("--dcnn-beta", type=NON_NEGATIVE, default=0.05, help="D-CNN margin beta; Cheng et al.: 0.05")
    group.add_argument("--dcnn-weight", type=NON_NEGATIVE, default=1.0,
                       help="weight of the D-CNN hinge beside L_CE (not published in the SNCA-CE paper)")


def triplet_arguments(group):
    group.add_argument("--triplet-margin", type=NON_NEGATIVE, default=0.2,
                       help="triplet margin on squared distances of unit embeddings (not published in the SNCA-CE "
                       "paper; FaceNet's 0.2)")


# The registry of memories: one entry each, read by the command line here and by lib.methods for the classes.
MEMORIES = {
    "mb": MemoryOptions("lib.memory_bank.MemoryBank", "SNCA-CE (MB): memory bank", "mb", memory_bank_arguments),
    "mu": MemoryOptions("lib.momentum_update.MomentumUpdate", "SNCA-CE (MU): momentum-updated key encoder", "mu",
                        momentum_update_arguments),
    "xbm": MemoryOptions("lib.cross_batch_memory.CrossBatchMemory", "SNCA-CE (XBM): cross-batch memory (Wang et al., "
                         "CVPR 2020), an extension beyond the paper", "mb", cross_batch_memory_arguments),
}

METHODS = {
    "snca-ce": MethodOptions("lambda * L_SNCA + L_CE (the paper's method)", True),
    "snca": MethodOptions("L_SNCA alone", True),
    "d-cnn": MethodOptions("L_CE + the D-CNN pairwise hinge (Cheng et al., TGRS 2018), no memory", False,
                           dcnn_arguments),
    "triplet": MethodOptions("the triplet loss with random positives and negatives, no memory", False,
                             triplet_arguments),
}


def offered(entry_point):
    """(memories, methods) that an entry point's ``--memory`` and ``--method`` offer, its own memory first. The
    baselines need no memory: the MB entry point trains them, as in the authors' code."""
    memories = [entry_point] + [name for name, memory in MEMORIES.items()
                                if memory.entry_point == entry_point and name != entry_point]
    methods = [name for name, method in METHODS.items() if method.uses_memory or entry_point == "mb"]
    return memories, methods
