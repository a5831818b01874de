"""The SNCA loss of one mini-batch against the memory (docs/method.md section 4; Wu et al., ECCV 2018; Kang et al.,
TGRS 2020)."""
import torch


def snca_loss(logits, indices, bank_labels, margin=0.0):
    """Negative log-probability that an image's soft neighbours in the memory share its class.

    Args:
        logits: (B, N) similarities of the batch to every memory row, already divided by the
            temperature: ``features @ memory.T / T``.
        indices: (B,) dataset index of each batch image; its own memory row is left out.
        bank_labels: (N,) class of every memory row.
        margin: subtracted from the positive logits, in logit units (the reference passes
            ``--margin / --temperature``): P_i <- P_i * exp(-margin) and Z_i <- Z_i - P_i + P_i * exp(-margin).

    Returns:
        ``-(1/B) * sum_i log(P_i / Z_i)`` over the rows with P_i > 0. The divisor stays B when a row is
        dropped (an image whose class has no other member), as in the reference.

    Computed in float32 log-sum-exp form: exp(1/0.05) = 4.9e8 would overflow float16.
    """
    batch = torch.arange(len(indices), device=logits.device)                   # (B,)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[batch, indices] = True                                             # (B, N)
    positive = bank_labels[indices].unsqueeze(1) == bank_labels.unsqueeze(0)   # (B, N)
    return masked_snca_loss(logits, positive, is_self, margin)


def masked_snca_loss(logits, same_class, left_out, margin=0.0):
    """``snca_loss`` with the columns to leave out given as a mask: the general form, for a memory whose columns
    are not one row per training image (a queue: slots still empty, slots holding the image's own embedding).

    Args:
        logits: (B, M) similarities over the temperature.
        same_class: (B, M) True where column j holds the class of batch image i.
        left_out: (B, M) True where column j is not a neighbour of image i (its own embedding, an empty slot).
        margin: as in ``snca_loss``.

    Returns ``-(1/B) * sum_i log(P_i / Z_i)`` over the rows with a positive left in; the divisor stays B.
    """
    logits = logits.float()                                                    # (B, M)
    positive = same_class & ~left_out                                          # (B, M)
    has_positive = positive.any(dim=1)                                         # (B,)
    # A row without a positive leaves nothing out: its Z stays finite (it may have no column left at all) and no
    # NaN reaches the gradient; its term is dropped below.
    left_out = left_out & has_positive.unsqueeze(1)                            # (B, M)

    log_z = torch.logsumexp(logits.masked_fill(left_out, -torch.inf), dim=1)   # (B,)
    # Rows without a positive get a dummy finite row, so that no NaN reaches the gradient.
    positive_logits = logits.masked_fill(~positive, -torch.inf)
    positive_logits = torch.where(has_positive.unsqueeze(1), positive_logits, 0.0)
    log_p = torch.logsumexp(positive_logits, dim=1)                            # (B,)
    if margin:
        # log(Z - P + P e^-m) = log Z + log(1 - (P / Z) (1 - e^-m))
        shrink = torch.exp(log_p - log_z) * -torch.expm1(torch.tensor(-margin, device=logits.device))
        log_z = log_z + torch.log1p(-shrink)                                   # (B,)
        log_p = log_p - margin
    log_prob = torch.where(has_positive, log_p - log_z, 0.0)                   # (B,)
    return -log_prob.sum() / len(logits)
