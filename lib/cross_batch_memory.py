"""XBM, a cross-batch memory (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020): an extension
beyond the SNCA-CE paper, on the MB entry point (``--memory xbm --queue-size M``).

A FIFO queue of the M most recent embeddings the network wrote, with their labels and dataset indices. The SNCA
loss of a batch is taken against the queue as it is before the step: only filled slots are neighbours, and an
image's own earlier entries are left out (as MB leaves out its own row); the divisor stays the batch size B.
After the step the global batch is enqueued, overwriting the oldest entries. The kNN reference is the network's
re-extracted training embeddings: the queue is not one row per training image.
"""
import torch

from lib.memory import MemoryVariant
from lib.snca_loss import masked_snca_loss

EMPTY = -1  # the dataset index of a slot never written


class CrossBatchMemory(MemoryVariant):
    options = {"queue_size": "queue_size"}

    def __init__(self, labels, dim, queue_size=8192, dtype=torch.float32, temperature=0.05, margin=0.0):
        super().__init__()
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long))        # (N,) of every image
        self.register_buffer("queue", torch.zeros(queue_size, dim, dtype=dtype))          # (M, D)
        self.register_buffer("queue_labels", torch.full((queue_size,), EMPTY))           # (M,)
        self.register_buffer("queue_indices", torch.full((queue_size,), EMPTY))          # (M,)
        self.register_buffer("head", torch.zeros((), dtype=torch.long))                  # the next slot written
        self.temperature, self.margin = temperature, margin

    def loss(self, features, indices, labels):
        """Float32 also under autocast, as MB's: exp(1/0.05) overflows float16."""
        with torch.autocast(features.device.type, enabled=False):
            logits = features.float() @ self.queue.float().T / self.temperature                # (B, M)
            own = indices.unsqueeze(1) == self.queue_indices.unsqueeze(0)                      # (B, M)
            left_out = own | (self.queue_indices == EMPTY).unsqueeze(0)                        # (B, M)
            same_class = labels.unsqueeze(1) == self.queue_labels.unsqueeze(0)                 # (B, M)
            return masked_snca_loss(logits, same_class, left_out, self.margin / self.temperature)

    @torch.no_grad()
    def step(self, model, indices, writes):
        """Enqueue the global batch in its order; of a batch larger than the queue, its last M images."""
        size = len(self.queue)
        indices, writes = indices[-size:], writes[-size:]                                     # (b,), (b, D)
        slots = (self.head + torch.arange(len(indices), device=self.head.device)) % size       # (b,)
        self.queue[slots] = writes.detach().to(self.queue.dtype)
        self.queue_labels[slots] = self.labels[indices]
        self.queue_indices[slots] = indices
        self.head.copy_((self.head + len(indices)) % size)
