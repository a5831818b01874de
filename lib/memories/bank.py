"""MB, the memory bank (Kang et al., TGRS 2020; Wu et al., ECCV 2018; docs/method.md section 5): one embedding per
training image, a momentum average of the network's own past embeddings."""
import math

import torch
import torch.nn.functional as F

from lib.memories.base import Memory
from lib.training.schedules import memory_momentum


class MemoryBank(Memory):
    """N x D memory, uniform in [-sqrt(3/D), sqrt(3/D)] at the start, with the label of every row.

    Stored in ``dtype`` (float16 / bfloat16 halve it for very large N); always read as float32. After each step
    m_i <- normalise(a * m_i + (1 - a) * f_i) for the batch's rows, a = 0.5, then 0.8 from epoch 80 and 0.9
    from epoch 120 (``--memory-momentum``); the bank's rows are the kNN reference that picks best.pt.
    """

    reference = "bank"
    options = {"momentum": "memory_momentum"}

    def __init__(self, labels, dim, dtype=torch.float32, momentum=0.5):
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long)
        bound = math.sqrt(3.0 / dim)
        self.register_buffer("memory", (torch.rand(len(labels), dim) * 2 * bound - bound).to(dtype))  # (N, D)
        self.register_buffer("labels", labels)                                                     # (N,)
        self.register_buffer("indices", torch.arange(len(labels)), persistent=False)               # (N,) row i: image i
        self.initial_momentum = self.momentum = momentum

    def set_epoch(self, epoch):
        self.momentum = memory_momentum(epoch, self.initial_momentum)

    def rows(self):
        return self.memory, self.labels, self.indices

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
