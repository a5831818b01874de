"""XBM, a cross-batch memory (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020): an extension
beyond the SNCA-CE paper, on the MB entry point (``--memory xbm --queue-size M``).

A FIFO queue of the M most recent embeddings the network wrote, with their labels and dataset indices. The SNCA
loss of a batch is taken against the queue as it is before the step: only filled slots are neighbours, and an
image's own earlier entries are left out (as MB leaves out its own row); the divisor stays the batch size B.
After the step the global batch is enqueued, overwriting the oldest entries. The kNN reference is the network's
re-extracted training embeddings: the queue is not one row per training image.
"""
import torch

from lib.memories.base import Memory

EMPTY = -1  # the dataset index of a slot never written


class CrossBatchMemory(Memory):
    options = {"queue_size": "queue_size"}

    def __init__(self, labels, dim, dtype=torch.float32, queue_size=8192):
        super().__init__()
        self.register_buffer("labels", torch.as_tensor(labels, dtype=torch.long))        # (N,) of every image
        self.register_buffer("queue", torch.zeros(queue_size, dim, dtype=dtype))          # (M, D)
        self.register_buffer("queue_labels", torch.full((queue_size,), EMPTY))           # (M,)
        self.register_buffer("queue_indices", torch.full((queue_size,), EMPTY))          # (M,)
        self.register_buffer("head", torch.zeros((), dtype=torch.long))                  # the next slot written

    def rows(self):
        """The queue: its empty slots hold index EMPTY, and a batch image's own earlier entries its own index."""
        return self.queue, self.queue_labels, self.queue_indices

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
