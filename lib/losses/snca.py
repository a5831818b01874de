"""The SNCA loss of a mini-batch against the rows a memory hands out (Wu et al., ECCV 2018; Kang et al., TGRS 2020;
docs/method.md section 4). Every SNCA number of the project is computed here, once.

For image i of the batch, with s_ij = f_i . m_j / T over the rows j that are its neighbours (not its own row, not
an empty slot), P_i = sum over the rows of its class of exp(s_ij), Z_i = sum over all of exp(s_ij), and a margin m
(in logits) that shrinks P_i to P_i e^-m inside Z_i:

    L_SNCA = -(1/B) sum_i log(P_i e^-m / (Z_i - P_i + P_i e^-m)),  over the i with P_i > 0; the divisor stays B.

Float32 log-sum-exp throughout, also under autocast: exp(1/0.05) = 4.9e8 overflows float16.
"""
import torch

PLAIN_MAX_ELEMENTS = 2**24  # B x N logits up to 64 MiB in float32 are held whole; beyond, the memory is streamed
DEFAULT_CHUNK_SIZE = 65_536  # streamed rows per block: a 256 x 65,536 float32 block is 64 MiB


def snca(features, labels, indices, rows, row_labels, row_indices, temperature, margin=0.0, chunk_size=None):
    """L_SNCA of unit embeddings ``features`` (B, D) with ``labels`` (B,) and dataset ``indices`` (B,) against a
    memory's ``rows`` (N, D), their ``row_labels`` (N,) and ``row_indices`` (N,): the image each row holds, -1 for
    an empty slot. ``margin`` is in cosine units, as the flag (divided by ``temperature`` here).

    The B x N logits are held whole when small (autograd), else the rows are streamed in blocks of ``chunk_size``
    (same value and gradient, extra memory O(B x chunk_size)). The rows get no gradient.
    """
    with torch.autocast(features.device.type, enabled=False):
        x = features if features.dtype == torch.float64 else features.float()                     # (B, D)
        if chunk_size is None and len(x) * len(rows) <= PLAIN_MAX_ELEMENTS:
            logits = x @ rows.to(x.dtype).T / temperature                                         # (B, N)
            log_p, log_z = log_sums(logits, *neighbours(labels, indices, row_labels, row_indices))
        else:
            log_p, log_z = _Streamed.apply(x, rows, labels, indices, row_labels, row_indices, float(temperature),
                                           int(chunk_size or DEFAULT_CHUNK_SIZE))
        return from_log_sums(log_p, log_z, margin / temperature)


def neighbours(labels, indices, row_labels, row_indices):
    """(same class (B, N), left out (B, N)): the rows of each image's class, and the rows that are not its
    neighbours: its own (same dataset index) and the empty slots (index -1)."""
    same_class = labels.unsqueeze(1) == row_labels.unsqueeze(0)                                   # (B, N)
    left_out = (indices.unsqueeze(1) == row_indices.unsqueeze(0)) | (row_indices < 0).unsqueeze(0)  # (B, N)
    return same_class, left_out


def log_sums(logits, same_class, left_out):
    """(log P (B,), log Z (B,)) over the neighbours; -inf where a row has none."""
    log_z = torch.logsumexp(logits.masked_fill(left_out, -torch.inf), dim=1)                     # (B,)
    log_p = torch.logsumexp(logits.masked_fill(left_out | ~same_class, -torch.inf), dim=1)        # (B,)
    return log_p, log_z


def from_log_sums(log_p, log_z, margin=0.0):
    """-(1/B) sum_i log(P_i e^-m / (Z_i - P_i + P_i e^-m)) over the i with P_i > 0, from (log P, log Z) (B,) and
    ``margin`` m in logits."""
    has_positive = ~log_p.isneginf()                                                              # (B,) NaN kept
    # The other rows get finite dummies: their terms are dropped and no NaN reaches a kept gradient.
    log_p = torch.where(has_positive, log_p, 0.0)                                                 # (B,)
    log_z = torch.where(has_positive, log_z, 0.0)                                                 # (B,)
    if margin:
        # log(Z - P + P e^-m) = log Z + log(1 - (P / Z) (1 - e^-m))
        shrink = torch.exp(log_p - log_z) * -torch.expm1(log_p.new_tensor(-margin))
        log_z = log_z + torch.log1p(-shrink)                                                      # (B,)
        log_p = log_p - margin
    log_prob = torch.where(has_positive, log_p - log_z, 0.0)                                      # (B,)
    return -log_prob.sum() / len(log_prob)


def snca_loss(logits, indices, labels, margin=0.0):
    """L_SNCA from given ``logits`` (B, N) = features @ memory.T / T against a memory of one row per image:
    ``indices`` (B,) are the batch images' rows (left out), ``labels`` (N,) the rows' classes, ``margin`` in logits.
    """
    rows = torch.arange(len(labels), device=logits.device)                                        # (N,)
    return from_log_sums(*log_sums(logits.float(), *neighbours(labels[indices], indices, labels, rows)), margin)


def chunked_snca_loss(features, memory, indices, labels, temperature, margin=0.0, chunk_size=DEFAULT_CHUNK_SIZE):
    """``snca_loss(features @ memory.T / temperature, indices, labels, margin)`` with the memory (N, D) streamed in
    blocks of ``chunk_size`` rows: the B x N logits are never held."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    rows = torch.arange(len(labels), device=memory.device)                                        # (N,)
    return snca(features, labels[indices], indices, memory, labels, rows, temperature, margin * temperature,
                chunk_size)


class _Streamed(torch.autograd.Function):
    """(log P, log Z) of ``log_sums`` over blocks of rows: forward keeps a running log-sum-exp per block; backward
    recomputes each block's ``log_sums`` and lets autograd differentiate it, weighted by d(total)/d(block) =
    exp(block - total). Saving the caller's tensors makes autograd refuse a memory updated in place before
    backward()."""

    @staticmethod
    def forward(ctx, x, rows, labels, indices, row_labels, row_indices, temperature, chunk_size):
        blocks = [log_sums(*block) for block in _blocks(x, rows, labels, indices, row_labels, row_indices,
                                                         temperature, chunk_size)]
        log_p, log_z = (torch.logsumexp(torch.stack(sums), dim=0) for sums in zip(*blocks))      # (B,) each
        ctx.save_for_backward(x, rows, labels, indices, row_labels, row_indices, log_p, log_z)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return log_p, log_z

    @staticmethod
    def backward(ctx, grad_p, grad_z):
        x, rows, labels, indices, row_labels, row_indices, log_p, log_z = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        grad = torch.zeros_like(x)                                                                # (B, D)
        with torch.enable_grad():
            for block in _blocks(x, rows, labels, indices, row_labels, row_indices, ctx.temperature, ctx.chunk_size):
                block_p, block_z = log_sums(*block)                                               # (B,) each
                weights = [torch.where(part > -torch.inf, g * torch.exp(part - total), 0.0)
                           for part, total, g in ((block_p, log_p, grad_p), (block_z, log_z, grad_z))]
                grad += torch.autograd.grad((block_p, block_z), x, weights)[0]
        return grad, None, None, None, None, None, None, None


def _blocks(x, rows, labels, indices, row_labels, row_indices, temperature, chunk_size):
    """(logits (B, c), same class (B, c), left out (B, c)) of each block of ``chunk_size`` rows."""
    for start in range(0, len(rows), chunk_size):
        end = start + chunk_size
        logits = x @ rows[start:end].to(x.dtype).T / temperature                                   # (B, c)
        yield logits, *neighbours(labels, indices, row_labels[start:end], row_indices[start:end])
