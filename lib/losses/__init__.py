"""The losses, and the registry of methods: which metric term a method trains, whether L_CE is added, whether it
needs the entry point's memory (``--memory``; then the memory's kNN reference picks best.pt, else the
re-extracted training embeddings do), its flags, and ``build``, which binds the run's numbers (lambda, T, margin,
...) into a ``Loss``. The registry is torch-free, so that ``--help`` and bad flags answer before torch is imported;
each loss file is imported when a run builds its loss. The training loop, the program and the flags read this
table and never test a method's name.
"""
from collections.abc import Callable
from typing import NamedTuple

from lib.cli.flags import NON_NEGATIVE


class Loss(NamedTuple):
    """A method's loss for a run: L = weight * metric + L_CE (L_CE when ``with_ce``)."""

    term: str                   # the metric term, logged as loss_<term>
    metric: Callable            # (embeddings (B, D) float32, labels (B,), indices (B,), memory) -> scalar
    weight: float = 1.0         # SNCA's lambda; the baselines' terms are summed as published
    with_ce: bool = True
    draw: Callable = None       # (labels (N,), generator) -> the epoch's companions of every image (triplets)


class Method(NamedTuple):
    help: str
    uses_memory: bool           # the metric term is SNCA against the entry point's --memory
    build: Callable             # args -> Loss
    add_arguments: Callable = lambda group: None  # the method's own flags
    pairwise: bool = False      # compares a batch's images with each other: one process only (no torchrun)

    def reference(self, memory):
        """The kNN reference that picks best.pt: the memory's, else the re-extracted training embeddings."""
        return memory.reference if self.uses_memory else "extracted"


def snca(with_ce):
    def build(args):
        from lib.losses.snca import snca

        temperature, margin = args.temperature, args.margin

        def metric(embeddings, labels, indices, memory):
            return snca(embeddings, labels, indices, *memory.rows(), temperature, margin)
        return Loss("snca", metric, args.lambda_, with_ce)
    return build


def dcnn(args):
    from lib.losses.dcnn import dcnn_loss

    tau, beta, weight = args.dcnn_tau, args.dcnn_beta, args.dcnn_weight
    return Loss("dcnn", lambda embeddings, labels, indices, memory: weight * dcnn_loss(embeddings, labels, tau, beta))


def triplet(args):
    from lib.losses.triplet import sample_triplets, triplet_loss

    margin = args.triplet_margin

    def metric(embeddings, labels, indices, memory):
        anchors, positives, negatives = embeddings.chunk(3)                            # (B, D) each
        return triplet_loss(anchors, positives, negatives, margin)
    return Loss("triplet", metric, with_ce=False, draw=sample_triplets)


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


METHODS = {
    "snca-ce": Method("lambda * L_SNCA + L_CE (the paper's method)", True, snca(with_ce=True)),
    "snca": Method("L_SNCA alone", True, snca(with_ce=False)),
    "d-cnn": Method("L_CE + the D-CNN pairwise hinge (Cheng et al., TGRS 2018), no memory", False, dcnn,
                    dcnn_arguments, pairwise=True),
    "triplet": Method("the triplet loss with random positives and negatives, no memory", False, triplet,
                      triplet_arguments),
}
TERMS = ("snca", "dcnn", "triplet")  # every method's metric term: the TensorBoard tags loss_<term>
