"""MB, the memory bank (docs/method.md section 5; Kang et al., TGRS 2020; Wu et al., ECCV 2018):
one embedding per training image, a momentum average of the network's own past embeddings."""
import math

import torch
import torch.nn.functional as F

from lib.chunked_snca_loss import chunked_snca_loss
from lib.memory import MemoryVariant
from lib.schedules import memory_momentum
from lib.snca_loss import snca_loss

PLAIN_MAX_ELEMENTS = 2**24  # B x N logits up to 64 MB in float32 take the plain form; beyond, the chunked one


class MemoryBank(MemoryVariant):
    """N x D memory, uniform in [-sqrt(3/D), sqrt(3/D)] at the start, with the label of every row.

    Stored in ``dtype`` (float16 / bfloat16 halve it for very large N); always read as float32. After each step
    m_i <- normalise(a * m_i + (1 - a) * f_i) for the batch's rows, a = 0.5, then 0.8 from epoch 80 and 0.9
    from epoch 120 (``--memory-momentum``); the bank's rows are the kNN reference that picks best.pt.
    """

    reference = "bank"
    options = {"momentum": "memory_momentum"}

    def __init__(self, labels, dim, dtype=torch.float32, temperature=0.05, margin=0.0, momentum=0.5):
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long)
        bound = math.sqrt(3.0 / dim)
        self.register_buffer("memory", (torch.rand(len(labels), dim) * 2 * bound - bound).to(dtype))  # (N, D)
        self.register_buffer("labels", labels)                                                     # (N,)
        self.temperature, self.margin, self.initial_momentum = temperature, margin, momentum
        self.momentum = momentum

    def set_epoch(self, epoch):
        self.momentum = memory_momentum(epoch, self.initial_momentum)

    def loss(self, features, indices, labels):
        return self(features, indices, self.temperature, self.margin / self.temperature)

    def forward(self, features, indices, temperature, margin=0.0):
        """L_SNCA of the batch against the memory as it is before the batch's update (``margin`` in logits).

        The plain B x N form (``snca_loss``) when it is small, the chunked form with the same value
        and gradient beyond. Float32 throughout, also under autocast: exp(1/0.05) overflows float16.
        """
        with torch.autocast(features.device.type, enabled=False):
            if len(features) * len(self.memory) <= PLAIN_MAX_ELEMENTS:
                logits = features.float() @ self.memory.float().T / temperature                    # (B, N)
                return snca_loss(logits, indices, self.labels, margin)
            return chunked_snca_loss(features, self.memory, indices, self.labels, temperature, margin)

    @torch.no_grad()
    def step(self, model, indices, writes):
        self.update(indices, writes, self.momentum)

    @torch.no_grad()
    def update(self, indices, features, momentum):
        """m_i <- normalise(momentum * m_i + (1 - momentum) * f_i) for the batch's rows (momentum 0 replaces them
        by the already unit ``features``, as MU does)."""
        rows = self.memory[indices].float() * momentum + features.detach().float() * (1.0 - momentum)  # (B, D)
        self.memory[indices] = F.normalize(rows, dim=1).to(self.memory.dtype)

    def reference_rows(self):
        return self.memory, self.labels
