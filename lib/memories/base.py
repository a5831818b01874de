"""What the training loop, the SNCA loss, validation, checkpoints, ``--compile`` and torchrun know of a memory: one
small interface, which each memory implements in its own file (``bank.py`` MB, ``key_encoder.py`` MU, and the
others ``lib.memories.MEMORIES`` declares).

A memory owns its whole state as buffers and submodules (MU: its key encoder), so its ``state_dict`` is the
checkpoint's memory entry. Per step the loop hands ``rows()`` (the memory as it is before the step) to the loss,
asks ``writes`` (what the batch will write) and, after the optimizer step, calls ``step`` with the whole global
batch's writes, so that every rank's memory stays identical (``lib.distributed``).
"""
import torch
from torch import nn


class Memory(nn.Module):
    """The interface, with the defaults of a memory that has no schedule, no kNN reference and no network."""

    reference = "extracted"  # the kNN reference that picks best.pt: 'bank' (reference_rows) or 'extracted'
    momentum = None      # the memory momentum of the current epoch, logged as memory_momentum (None: it has none)
    options = {}         # constructor keyword -> the flag (args attribute) that sets it, for ``build``

    @classmethod
    def build(cls, args, labels, net, dist):
        """The memory for a run: ``labels`` (N,) of the training images, ``net`` the network before DDP."""
        return cls(labels, args.dim, getattr(torch, args.memory_dtype),
                   **{key: getattr(args, flag) for key, flag in cls.options.items()})

    def set_epoch(self, epoch):
        """Apply the schedules of ``epoch`` (0-based) before its first step."""

    def rows(self):
        """(rows (N, D), their labels (N,), the dataset index each holds (N,), -1 for an empty slot): what the
        SNCA loss compares a batch with, as the memory is before the step."""
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
