"""The triplet baseline: one triplet per training image and epoch, and the hinge on squared distances (docs/method.md
section 9; Schroff et al., "FaceNet", CVPR 2015, section 3.1)."""
import torch


def sample_triplets(labels, generator):
    """Draws a positive and a negative for every training image, each image being an anchor once.

    The positive of anchor a is a uniformly random *other* image of a's class; an image alone in its class is its own
    positive (its d2(a, p) is then 0). The negative is drawn in two steps: a class uniformly among the classes other
    than a's, then an image uniformly within that class, so that small classes are not under-represented.

    Args:
        labels: (N,) int64 CPU tensor, the class of every training image.
        generator: the ``torch.Generator`` every draw comes from; the same state gives the same triplets.

    Returns:
        ``(positives, negatives)``, two (N,) int64 tensors of dataset indices.
    """
    classes, label_index, counts = torch.unique(labels, return_inverse=True, return_counts=True)  # (K,), (N,), (K,)
    if len(classes) < 2:
        raise ValueError(f"triplets need at least two classes, got {len(classes)}")
    n = len(labels)
    order = torch.argsort(label_index, stable=True)                            # (N,) images grouped by class
    starts = torch.cumsum(counts, 0) - counts                                  # (K,) first slot of each class
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[label_index[order]]                 # (N,) place of an image in its class
    own = counts[label_index]                                                  # (N,)

    # Skip over the anchor: draw among the own - 1 others, then shift the draws at or past its own place.
    # The float64 product rounds up to own - 1 at worst for huge classes, hence the clamp.
    draw = (torch.rand(n, generator=generator, dtype=torch.float64) * (own - 1)).long().clamp_max(own - 2)  # (N,)
    positive_rank = torch.where(own > 1, draw + (draw >= rank).long(), rank)   # (N,)
    positives = order[starts[label_index] + positive_rank]                     # (N,)

    offset = torch.randint(1, len(classes), (n,), generator=generator)         # (N,) in 1 .. K-1
    other = (label_index + offset) % len(classes)                              # (N,) uniform over the other classes
    draw = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[other]).long()
    negatives = order[starts[other] + draw.clamp_max(counts[other] - 1)]       # (N,)
    return positives, negatives


def triplet_loss(anchors, positives, negatives, margin=0.2):
    """``mean_t max(0, d2(a_t, p_t) - d2(a_t, n_t) + margin)`` with squared Euclidean distances (FaceNet, section 3.1).

    Args:
        anchors, positives, negatives: (T, D) L2-normalised embeddings, so each d2 lies in [0, 4].
        margin: the SNCA-CE paper does not publish its margin; 0.2 is FaceNet's alpha, chosen there for exactly this
            setting (L2-normalised embeddings, squared distances), i.e. 5% of the largest possible distance.

    Returns:
        A scalar in float32, or in float64 for float64 embeddings (half precision is promoted to float32).
    """
    dtype = torch.promote_types(anchors.dtype, torch.float32)
    a, p, q = anchors.to(dtype), positives.to(dtype), negatives.to(dtype)      # (T, D) each
    d2_positive = (a - p).pow(2).sum(dim=1)                                    # (T,)
    d2_negative = (a - q).pow(2).sum(dim=1)                                    # (T,)
    return torch.relu(d2_positive - d2_negative + margin).mean()
