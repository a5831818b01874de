"""What the training loop, validation, checkpoints, ``--compile`` and torchrun know of a memory: one small
interface, which each variant implements in its own file (``memory_bank.py`` MB, ``momentum_update.py`` MU, and
the others that ``lib.options.MEMORIES`` declares: where the class lives, its title, entry point and flags).

A variant owns its whole state as buffers and submodules (MU: its key encoder), so its ``state_dict`` is the
checkpoint's memory entry. Per step the loop calls ``loss`` (against the memory as it is before the step),
``writes`` (what the batch will write), and, after the optimizer step, ``step`` with the whole global batch's
writes, so that every rank's memory stays identical (``lib.distributed``).
"""
import torch
from torch import nn


class MemoryVariant(nn.Module):
    """The interface, with the defaults of a memory that has no schedule, no kNN reference and no network."""

    reference = "extracted"  # the kNN reference that picks best.pt: 'bank' (reference_rows) or 'extracted'
    momentum = None      # the memory momentum of the current epoch, logged as memory_momentum (None: it has none)
    options = {}         # constructor keyword -> the flag (args attribute) that sets it, for ``build``

    @classmethod
    def build(cls, args, labels, net, dist):
        """The variant for a run: ``labels`` (N,) of the training images, ``net`` the network before DDP."""
        return cls(labels, **cls.snca_options(args), **{key: getattr(args, flag) for key, flag in cls.options.items()})

    @staticmethod
    def snca_options(args):
        """The flags every memory of the SNCA loss takes: D, its storage type, the temperature and the margin."""
        return {"dim": args.dim, "dtype": getattr(torch, args.memory_dtype), "temperature": args.temperature,
                "margin": args.margin}

    def set_epoch(self, epoch):
        """Apply the schedules of ``epoch`` (0-based) before its first step."""

    def loss(self, features, indices, labels):
        """L_SNCA (float32 scalar) of unit embeddings (B, D) of dataset ``indices`` (B,) and ``labels`` (B,)."""
        raise NotImplementedError

    def writes(self, images, embeddings):
        """(B, D) what this batch writes into the memory: by default the network's own embeddings."""
        return embeddings

    @torch.no_grad()
    def step(self, model, indices, writes):
        """After the optimizer step: the updates of the global batch's ``indices`` (B,) and ``writes`` (B, D)."""
        raise NotImplementedError

    def reference_rows(self):
        """(embeddings (N, D), labels (N,)) of the training images for the 'bank' kNN, or None."""
        return None

    def replicated(self):
        """The tensors that every rank of a torchrun launch holds bit for bit alike (checked every epoch)."""
        return tuple(self.buffers())

    def compile(self, **kwargs):
        """``--compile``: compile in place the networks the step runs (none by default; the loss stays eager)."""
