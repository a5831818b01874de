"""The memories SNCA is computed against, and their registry: the one place a memory is declared.

A memory holds one embedding per training image (or a queue of recent ones) and updates it after each step; it
hands its rows to the SNCA loss (``lib.losses.snca``) and computes no loss itself. An entry names the memory's
title, the entry point whose ``--memory`` offers it, its own flags and its class. The classes import torch, so
each is loaded by a plain import inside a function, called only when a run builds its memory: ``--help`` and bad
flags answer without torch.
"""
from collections.abc import Callable
from typing import NamedTuple

from lib.cli.flags import COUNT, MOMENTUM


class MemoryEntry(NamedTuple):
    title: str                  # one line for --help
    entry_point: str            # the entry point whose --memory offers it: 'mb' or 'mu'
    add_arguments: Callable     # its own flags, in its --help group
    load: Callable              # () -> its lib.memories.base.Memory subclass


def memory_bank_arguments(group):
    group.add_argument("--memory-momentum", "--m-mementum", type=MOMENTUM, default=0.5,
                       help="memory-bank momentum until epoch 80 (then 0.8, and 0.9 from 120); paper: 0.5")


def key_encoder_arguments(group):
    group.add_argument("--key-momentum", "--ema-momentum", type=MOMENTUM, default=0.999,
                       help="key-encoder momentum m of theta_k <- m theta_k + (1 - m) theta; paper: 0.999")
    group.add_argument("--key-bn", default="sync", choices=("sync", "shuffle"),
                       help="under torchrun, the key encoder's BatchNorm batch: sync, the whole global batch "
                       "(the paper's one-GPU setting, exactly); shuffle, MoCo's shuffle-BN across ranks. "
                       "One process: the whole batch either way")


def cross_batch_arguments(group):
    group.add_argument("--queue-size", type=COUNT, default=8192,
                       help="--memory xbm: embeddings in the queue, M (not in the SNCA-CE paper)")


def memory_bank():
    from lib.memories.bank import MemoryBank
    return MemoryBank


def key_encoder_memory():
    from lib.memories.key_encoder import KeyEncoderMemory
    return KeyEncoderMemory


def cross_batch_memory():
    from lib.memories.cross_batch import CrossBatchMemory
    return CrossBatchMemory


MEMORIES = {
    "mb": MemoryEntry("SNCA-CE (MB): memory bank", "mb", memory_bank_arguments, memory_bank),
    "mu": MemoryEntry("SNCA-CE (MU): momentum-updated key encoder", "mu", key_encoder_arguments, key_encoder_memory),
    "xbm": MemoryEntry("SNCA-CE (XBM): cross-batch memory (Wang et al., CVPR 2020), an extension beyond the paper",
                       "mb", cross_batch_arguments, cross_batch_memory),
}
