"""The SNCA loss streamed over chunks of the memory (docs/method.md section 4; Wu et al., ECCV 2018).

Same value and gradient as ``snca_loss(features @ memory.T / T, ...)``, but the B x N logits are never
held: forward and backward each walk the memory in blocks of ``chunk_size`` rows, so the extra memory
is O(B x chunk_size) whatever N is.
"""
import torch

# A B x chunk float32 block of logits is 256 x 65,536 x 4 bytes = 64 MiB at B = 256; two such blocks and
# a B x chunk bool mask are alive at once.
DEFAULT_CHUNK_SIZE = 65_536


def _compute_dtype(features):
    """float32 for float32 / bfloat16 / float16 features (exp(1/0.05) overflows float16); float64 kept."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def _chunks(features, memory, indices, query_labels, bank_labels, temperature, chunk_size):
    """Yields (memory block, its logits, same-class mask) for each block of memory rows.

    The self term's logit is set to -inf, so that it drops out of every sum and gets exp(-inf) = 0 gradient.
    """
    for start in range(0, memory.shape[0], chunk_size):
        block = memory[start:start + chunk_size].to(features.dtype)                     # (c, D)
        logits = (features @ block.T).div_(temperature)                                 # (B, c)
        own = indices.long() - start                                                    # (B,)
        in_block = ((own >= 0) & (own < block.shape[0])).unsqueeze(1)                  # (B, 1)
        own = own.clamp(0, block.shape[0] - 1).unsqueeze(1)                             # (B, 1)
        # gather / scatter rather than indexing by a data-dependent row set: no device sync.
        logits.scatter_(1, own, logits.gather(1, own).masked_fill_(in_block, -torch.inf))
        same_class = query_labels.unsqueeze(1) == bank_labels[start:start + chunk_size].unsqueeze(0)  # (B, c)
        yield block, logits, same_class


def _log_sum_exp(logits, left_out):
    """Row-wise log-sum-exp of the logits not left out, -inf for a row with none; one extra B x c block."""
    terms = logits.masked_fill(left_out, -torch.inf)                                   # (B, c)
    top = terms.amax(1, keepdim=True).clamp_min_(torch.finfo(terms.dtype).min)        # (B, 1) finite if empty
    return terms.sub_(top).exp_().sum(1).log_() + top.squeeze(1)                      # (B,)


class _ChunkedSNCA(torch.autograd.Function):
    """Forward: running log-sum-exp per row of the positive and of the negative terms.

    Backward, with Z' = N + P e^-m (N, P: sums of exp(s) over negatives, positives; self left out) and
    q_i = P_i e^-m / Z'_i: L = -(1/B) sum_i log q_i, so
    dL/ds_ij = (1/B) exp(s_ij) / Z'_i on a negative, -(1/B) (1 - q_i) exp(s_ij) / P_i on a positive
    (= (1/B) [e^-m exp(s_ij) / Z'_i - exp(s_ij) / P_i]), zero on the self term and on the rows without a
    positive; both forms are exponentials of non-positive numbers. dL/df_i = sum_j dL/ds_ij m_j / T.
    """

    @staticmethod
    def forward(ctx, features, memory, indices, bank_labels, temperature, margin, chunk_size):
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.to(_compute_dtype(features))                                   # (B, D)
            query_labels = bank_labels[indices]                                         # (B,)
            log_neg = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)  # (B,)
            log_pos = log_neg.clone()                                                   # (B,)
            for _, logits, positive in _chunks(x, memory, indices, query_labels, bank_labels, temperature,
                                               chunk_size):
                # logaddexp of the running and the block's log-sum-exp is the online (max, sum) update.
                block_neg = _log_sum_exp(logits, positive)                              # (B,)
                block_pos = _log_sum_exp(logits, positive.logical_not_())               # (B,) mask reused
                log_neg = torch.logaddexp(log_neg, block_neg)                           # (B,)
                log_pos = torch.logaddexp(log_pos, block_pos)                           # (B,)
            has_positive = log_pos > -torch.inf                                         # (B,)
            # log Z' = log(N + P e^-m): no cancellation of Z - P when P ~ Z.
            log_zp = torch.logaddexp(log_neg, log_pos - margin)                         # (B,)
            # Rows without a positive get finite dummies: their terms and gradients are zeroed.
            log_pos = torch.where(has_positive, log_pos, 0.0)                           # (B,)
            log_zp = torch.where(has_positive, log_zp, 0.0)                             # (B,)
            log_prob = torch.where(has_positive, log_pos - margin - log_zp, 0.0)        # (B,)
            loss = -log_prob.sum() / x.shape[0]                                         # ()
        # memory and bank_labels are the caller's tensors (saved by reference, no copy); saving them
        # also makes autograd raise if the memory is updated in place before backward().
        ctx.save_for_backward(features, memory, indices, bank_labels, log_pos, log_zp, has_positive)
        ctx.temperature, ctx.margin, ctx.chunk_size = temperature, margin, chunk_size
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        features, memory, indices, bank_labels, log_pos, log_zp, has_positive = ctx.saved_tensors
        temperature, margin = ctx.temperature, ctx.margin
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = features.to(_compute_dtype(features))                                   # (B, D)
            query_labels = bank_labels[indices]                                         # (B,)
            grad = torch.zeros_like(x)                                                  # (B, D)
            dropped = ~has_positive.unsqueeze(1)                                        # (B, 1)
            one_minus_q = -torch.expm1(log_pos - margin - log_zp).unsqueeze(1)          # (B, 1)
            for block, logits, positive in _chunks(x, memory, indices, query_labels, bank_labels, temperature,
                                                   ctx.chunk_size):
                # In place (logits too): two B x c float blocks alive, not six. Entries masked below may be inf.
                to_z = (logits - log_zp.unsqueeze(1)).exp_().masked_fill_(positive, 0.0)  # (B, c) exp(s) / Z'
                to_p = logits.sub_(log_pos.unsqueeze(1)).exp_().mul_(one_minus_q)      # (B, c) (1-q) exp(s) / P
                grad_logits = to_z.sub_(to_p.masked_fill_(positive.logical_not_(), 0.0))  # (B, c) B dL/ds
                grad_logits.masked_fill_(dropped, 0.0)
                grad += grad_logits @ block                                             # (B, D)
            grad *= grad_loss.to(x.dtype) / (x.shape[0] * temperature)
        return grad.to(features.dtype), None, None, None, None, None, None


def chunked_snca_loss(features, memory, indices, bank_labels, temperature, margin=0.0, chunk_size=DEFAULT_CHUNK_SIZE):
    """SNCA loss of a batch against the memory without the B x N logits (docs/method.md section 4).

    Args:
        features: (B, D) batch embeddings (float32, or bfloat16 / float16 from autocast; computed in float32).
        memory: (N, D) memory rows (float32 or a half-precision store, upcast block by block); gets no gradient.
        indices: (B,) dataset index of each batch image; its own memory row is left out.
        bank_labels: (N,) class of every memory row.
        temperature: T, the logits are ``features @ memory.T / T``.
        margin: in logit units, as in ``snca_loss`` (the reference passes ``--margin / --temperature``).
        chunk_size: memory rows per block; extra memory is a few B x chunk_size float32 blocks.

    Returns:
        The scalar ``snca_loss(features.float() @ memory.float().T / temperature, indices, bank_labels, margin)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return _ChunkedSNCA.apply(features, memory, indices, bank_labels, float(temperature), float(margin),
                              int(chunk_size))
