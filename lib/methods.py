"""The registries: every method and every memory is one entry (docs/method.md sections 1, 4-6 and 9).

A method names its metric term (logged as ``loss_<term>``), whether L_CE is added, whether it needs the entry
point's memory (``--memory``; then the memory's kNN reference picks best.pt, else the re-extracted training
embeddings do), and what it asks of a batch. A memory is a ``lib.memory.MemoryVariant`` class, declared once in
``lib.options.MEMORIES`` (where it lives, its title, entry point and flags). The training loop, the program, the
checkpoints and the flags read these tables and never test a name. Help and flags are declared there, without
torch.
"""
import importlib
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lib.dcnn_loss import dcnn_loss
from lib.options import MEMORIES as MEMORY_OPTIONS
from lib.options import METHODS as OPTIONS
from lib.options import offered  # noqa: F401 -- the registry's address of it
from lib.triplet_loss import sample_triplets, triplet_loss


def variant(address):
    """The class at ``module.Class``: a memory's entry in ``lib.options.MEMORIES`` names where it lives."""
    module, _, name = address.rpartition(".")
    return getattr(importlib.import_module(module), name)


MEMORIES = {name: variant(declared.variant) for name, declared in MEMORY_OPTIONS.items()}


def snca(embeddings, labels, indices, memory, args):
    """L_SNCA against the memory (docs/method.md section 4), unweighted: lambda applies in the total."""
    return memory.loss(embeddings, indices, labels)


def dcnn(embeddings, labels, indices, memory, args):
    return args.dcnn_weight * dcnn_loss(embeddings, labels, args.dcnn_tau, args.dcnn_beta)


def triplet(embeddings, labels, indices, memory, args):
    anchors, positives, negatives = embeddings.chunk(3)                                # (B, D) each
    return triplet_loss(anchors, positives, negatives, args.triplet_margin)


def with_triplets(images, indices, batches, draws):
    """The anchors' images followed by their drawn positives' and negatives': one forward pass for all three."""
    others = indices.cpu()
    return torch.cat([images, batches.images_at(draws[0][others]), batches.images_at(draws[1][others])])


class Method(NamedTuple):
    term: str                   # the metric term, logged as loss_<term>
    with_ce: bool               # L_CE is added (else FC2 gets no gradient and is frozen)
    uses_memory: bool           # the metric term is SNCA against the entry point's --memory
    metric: Callable            # (embeddings (B, D) float32, labels, indices, memory, args) -> scalar
    help: str
    add_arguments: Callable = lambda group: None  # the method's own flags
    pairwise: bool = False      # compares a batch's images with each other: one process only (no torchrun)
    draw: Callable = None       # (labels, generator) -> the epoch's random draws, for ``inputs``
    inputs: Callable = lambda images, indices, batches, draws: images  # what goes through the network
    copies: int = 1             # images through the network per batch image (triplet: anchor, positive, negative)

    def ce(self, logits, labels):
        """L_CE on the class prototypes (float32 under autocast), or 0 for a method without it."""
        return F.cross_entropy(logits, labels) if self.with_ce else logits.new_zeros(())

    def total(self, args, metric, ce):
        """L = lambda * L_SNCA + L_CE (docs/method.md section 1); a baseline's terms are summed as published."""
        return (args.lambda_ * metric if self.term == "snca" else metric) + ce

    def reference(self, memory):
        """The kNN reference that picks best.pt: the memory's, else the re-extracted training embeddings."""
        return memory.reference if self.uses_memory else "extracted"

    def draws(self, labels, seed):
        return self.draw(labels, torch.Generator().manual_seed(seed)) if self.draw is not None else None


def declared(name):
    """What the command line knows of method ``name`` (``lib.options``, declared there once, without torch): its
    ``help``, whether it ``uses_memory`` and its own flags."""
    return OPTIONS[name]._asdict()


METHODS = {
    "snca-ce": Method("snca", True, metric=snca, **declared("snca-ce")),
    "snca": Method("snca", False, metric=snca, **declared("snca")),
    "d-cnn": Method("dcnn", True, metric=dcnn, **declared("d-cnn"), pairwise=True),
    "triplet": Method("triplet", False, metric=triplet, **declared("triplet"), draw=sample_triplets,
                      inputs=with_triplets, copies=3),
}
