"""The memory of SNCA: one embedding per training image (docs/method.md sections 5 and 6).

MB keeps a momentum average of the network's own embeddings; MU writes the embeddings of a
momentum-updated copy of the network, the key encoder (He et al., MoCo, CVPR 2020). Both are
buffers with explicit no-grad updates, called by the training loop after ``backward()``.
"""
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lib.chunked_snca_loss import chunked_snca_loss
from lib.parallel import shuffled_forward, sync_batch_norm
from lib.snca_loss import snca_loss

PLAIN_MAX_ELEMENTS = 2**24  # B x N logits up to 64 MB in float32 take the plain form; beyond, the chunked one


class Memory(nn.Module):
    """N x D memory, uniform in [-sqrt(3/D), sqrt(3/D)] at the start, with the label of every row.

    Stored in ``dtype`` (float16 / bfloat16 halve it for very large N); always read as float32.
    """

    def __init__(self, labels, dim, dtype=torch.float32):
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long)
        bound = math.sqrt(3.0 / dim)
        self.register_buffer("memory", (torch.rand(len(labels), dim) * 2 * bound - bound).to(dtype))  # (N, D)
        self.register_buffer("labels", labels)                                                     # (N,)

    def forward(self, features, indices, temperature, margin=0.0):
        """L_SNCA of the batch against the memory as it is before the batch's update.

        The plain B x N form (``snca_loss``) when it is small, the chunked form with the same value
        and gradient beyond. Float32 throughout, also under autocast: exp(1/0.05) overflows float16.
        """
        with torch.autocast(features.device.type, enabled=False):
            if len(features) * len(self.memory) <= PLAIN_MAX_ELEMENTS:
                logits = features.float() @ self.memory.float().T / temperature                    # (B, N)
                return snca_loss(logits, indices, self.labels, margin)
            return chunked_snca_loss(features, self.memory, indices, self.labels, temperature, margin)

    @torch.no_grad()
    def update(self, indices, features, momentum):
        """m_i <- normalise(momentum * m_i + (1 - momentum) * f_i) for the batch's rows.

        MB uses momentum 0.5 / 0.8 / 0.9 (``memory_momentum``); MU passes 0, which replaces the rows
        by the (already unit) key embeddings.
        """
        rows = self.memory[indices].float() * momentum + features.detach().float() * (1.0 - momentum)  # (B, D)
        self.memory[indices] = F.normalize(rows, dim=1).to(self.memory.dtype)


class KeyEncoder(nn.Module):
    """A frozen copy of the network moved towards it by an exponential moving average (MU).

    Its forward runs without gradient with BatchNorm in training mode, so that its running
    statistics come from its own passes, as in the reference. On one device the reference's
    shuffle-BN (shuffle the batch, encode, un-shuffle) gives the same output, so it is not done.
    Under torchrun (``dist`` of several ranks) ``key_bn`` picks the BatchNorm batch: 'sync', the whole
    global batch, as one process (``lib.parallel.sync_batch_norm``); 'shuffle', MoCo's shuffle-BN
    across ranks (``lib.parallel.shuffled_forward``).
    """

    def __init__(self, model, dist=None, key_bn="sync"):
        super().__init__()
        self.encoder = copy.deepcopy(model)
        if dist is not None and key_bn == "sync":
            self.encoder = sync_batch_norm(self.encoder, dist)
        self.encoder.requires_grad_(False)
        self.shuffle_over = dist if dist is not None and dist.world_size > 1 and key_bn == "shuffle" else None

    @torch.no_grad()
    def forward(self, images):
        self.encoder.train()
        if self.shuffle_over is not None:
            return shuffled_forward(self.encoder, images, self.shuffle_over)
        return self.encoder(images)

    @torch.no_grad()
    def update(self, model, momentum):
        """theta_k <- momentum * theta_k + (1 - momentum) * theta_q over parameters, not BN statistics."""
        for key, query in zip(self.encoder.parameters(), model.parameters()):
            key.mul_(momentum).add_(query.detach(), alpha=1.0 - momentum)
