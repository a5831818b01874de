"""The D-CNN metric term, a pairwise hinge on in-batch distances (docs/method.md section 9; Cheng et al., "When deep
learning meets metric learning: remote sensing image scene classification via learning discriminative CNNs", IEEE TGRS
2018)."""
import torch


def dcnn_loss(embeddings, labels, tau=0.44, beta=0.05):
    """Pairwise contrastive hinge of D-CNN, to be added to the cross-entropy term by the caller.

    For every pair i < j of the mini-batch,
        d2_ij = ||x_i - x_j||^2,   y_ij = +1 if labels[i] == labels[j] else -1,
        l_ij = max(0, beta - y_ij * (tau - d2_ij)),
    and the loss is ``sum_{i<j} l_ij / B^2`` (averaged over the B x B matrix, as docs/method.md section 9 says).

    Args:
        embeddings: (B, D) embeddings as the model outputs them (L2-normalised, so d2 lies in [0, 4]).
        labels: (B,) class of each image.
        tau: the distance threshold: same-class pairs are pulled below ``tau - beta``, other pairs pushed
            beyond ``tau + beta``. Default: docs/method.md section 9's 0.44, for normalised embeddings.
        beta: half the width of the band around ``tau`` that the hinge asks to keep empty between the two kinds of
            pair. Default: docs/method.md section 9's 0.05.

    Returns:
        A scalar in float32, or in float64 for float64 embeddings (half precision is promoted to float32).
    """
    x = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))    # (B, D)
    batch = x.shape[0]
    squared_norms = x.pow(2).sum(dim=1)                                        # (B,)
    # The expansion can go slightly negative by rounding for nearby points; a distance is never negative.
    d2 = (squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * x @ x.T).clamp_min(0)  # (B, B)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)                          # (B, B)
    y = torch.where(same, 1.0, -1.0).to(x.dtype)                               # (B, B)
    hinge = torch.relu(beta - y * (tau - d2))                                  # (B, B)
    upper = torch.ones(batch, batch, dtype=torch.bool, device=x.device).triu(diagonal=1)  # (B, B) pairs i < j
    return torch.where(upper, hinge, 0.0).sum() / (batch * batch)
