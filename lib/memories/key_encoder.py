"""MU, the momentum update (Kang et al., TGRS 2020; docs/method.md section 6): a slowly moving copy of the network,
the key encoder (He et al., MoCo, CVPR 2020), writes its embeddings into a memory of one row per training image;
the rows are replaced, not averaged. The entry point is ``train_SNCA_CE_MC/main.py`` (the folder keeps the name of
the authors' code)."""
import copy

import torch

from lib.distributed.parallel import shuffled_forward, sync_batch_norm
from lib.memories.bank import MemoryBank
from lib.memories.base import Memory


class KeyEncoder(torch.nn.Module):
    """A frozen copy of the network moved towards it by an exponential moving average.

    Its forward runs without gradient with BatchNorm in training mode, so that its running
    statistics come from its own passes, as in the reference. On one device the reference's
    shuffle-BN (shuffle the batch, encode, un-shuffle) gives the same output, so it is not done.
    Under torchrun (``dist`` of several ranks) ``key_bn`` picks the BatchNorm batch: 'sync', the whole
    global batch, as one process (``lib.distributed.parallel.sync_batch_norm``); 'shuffle', MoCo's shuffle-BN
    across ranks (``lib.distributed.parallel.shuffled_forward``).
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

    def compile(self, **kwargs):
        """The encoder's forward compiled in place (``nn.Module.compile`` keeps its state-dict keys)."""
        self.encoder.compile(**kwargs)


class KeyEncoderMemory(Memory):
    """The memory ``bank`` (its SNCA loss, MB's) written by ``key_encoder``; the network's re-extracted
    training embeddings are the kNN reference that picks best.pt."""

    def __init__(self, bank, key_encoder, key_momentum=0.999):
        super().__init__()
        self.bank, self.key_encoder, self.key_momentum = bank, key_encoder, key_momentum

    @classmethod
    def build(cls, args, labels, net, dist):
        return cls(MemoryBank(labels, args.dim, getattr(torch, args.memory_dtype)), KeyEncoder(net, dist, args.key_bn),
                   args.key_momentum)

    def rows(self):
        return self.bank.rows()

    def writes(self, images, embeddings):
        """The key encoder's embeddings of the batch, with its weights before this step's update (MoCo's order)."""
        return self.key_encoder(images)[0]                                        # (B, D)

    @torch.no_grad()
    def step(self, model, indices, writes):
        self.key_encoder.update(model, self.key_momentum)
        self.bank.update(indices, writes, 0.0)

    def reference_rows(self):
        return self.bank.reference_rows()

    def replicated(self):
        """The rows (the key encoder's BatchNorm statistics differ between ranks under --key-bn shuffle)."""
        return self.bank.replicated()

    def compile(self, **kwargs):
        self.key_encoder.compile(**kwargs)
