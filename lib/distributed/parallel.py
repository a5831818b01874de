"""The network and its training step across the ranks of a ``torchrun`` launch: DistributedDataParallel, each
rank's part of a batch (``BatchPart``: the one-process augmentation draws, empty parts, the gradient weight),
BatchNorm over the global batch (``--sync-bn``, ``--key-bn sync``; a Gloo version on CPUs, where PyTorch's
SyncBatchNorm refuses CPU tensors) and MoCo's shuffle-BN for the key encoder (``--key-bn shuffle``). With one
process each function returns the network or its output unchanged.
"""
from typing import NamedTuple

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from datasets.augment import draw_params, train_augment
from lib.distributed.ranks import Dist, all_gather_varlen, shard_batch


def data_parallel(model, dist):
    """``model`` in DistributedDataParallel under torchrun (its gradients averaged over ranks), else itself.
    Every parameter that requires a gradient must get one at every step."""
    if dist.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


class BatchPart(NamedTuple):
    """This rank's part (``size`` images, possibly none) of a global batch of ``global_size`` (``shard_batch``), and
    what makes its step the one-process step of the whole batch: the same augmentation draws, an empty part's
    zero loss that still reaches every parameter, and the weight that turns DDP's average into the global mean."""

    size: int
    global_size: int
    dist: Dist

    def augment(self, images, copies=1, pipeline=None):
        """``train_augment`` of this rank's images with the draws of one process for the whole global batch
        (``copies`` times: the triplet's anchors, positives and negatives), of which the rank applies its rows.
        ``pipeline``: N-band images' (``datasets.augment.BandPipeline``); None, the reference RGB one."""
        train, draw = (pipeline.train, pipeline.draw) if pipeline is not None else (train_augment, draw_params)
        if self.dist.world_size == 1:
            return train(images)
        rows = shard_batch(torch.arange(self.global_size, device=images.device), self.dist.rank,
                           self.dist.world_size)                                          # (b,)
        rows = torch.cat([rows + copy * self.global_size for copy in range(copies)])     # (copies * b,)
        params = draw(copies * self.global_size, images.device)
        return train(images, params={name: value[rows] for name, value in params.items()})

    def mean(self, loss, tensor, *rest):
        """``loss(tensor, *rest)``, the mean over this part; for an empty part 0, through which every parameter
        still gets a (zero) gradient, so that the rank joins DDP's all-reduce."""
        return loss(tensor, *rest) if self.size else tensor.sum()

    def weight(self, loss):
        """DDP averages the ranks' gradients: weighting each rank's mean by its share of the global batch (1 in
        one process) makes that the gradient of the global batch's mean, however unequal the parts."""
        return loss * (self.size * self.dist.world_size / self.global_size)


def sync_buffers(module, dist):
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each training forward updates them from the
    rank's own shard, so they differ between ranks until this; then every rank evaluates rank 0's network."""
    if dist.world_size > 1:
        for buffer in module.buffers():
            torch_dist.broadcast(buffer, src=0)


class _SumOverRanks(torch.autograd.Function):
    """all_reduce (sum) with a gradient: every rank's output depends on every rank's input, so the incoming
    gradients are summed over ranks too."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the images of all ranks, for the CPU (Gloo), where ``torch.nn.SyncBatchNorm`` does not run.

    Training mode: the channel mean, then the (biased) variance of the global batch, each a differentiable sum
    over ranks; the running statistics move as BatchNorm2d's (unbiased variance). Evaluation mode: BatchNorm2d.
    """

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        shape, x32 = (1, -1, 1, 1), x.float()
        count = x32.new_tensor([x.numel() // max(1, x.shape[1])])                                 # (1,)
        sums = _SumOverRanks.apply(torch.cat([x32.sum(dim=(0, 2, 3)), count]))                   # (C + 1,)
        n = sums[-1]
        mean = sums[:-1] / n                                                                      # (C,)
        centred = x32 - mean.view(shape)                                                          # (b, C, H, W)
        var = _SumOverRanks.apply((centred * centred).sum(dim=(0, 2, 3))) / n                    # (C,)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp_min(1), self.momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape) * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batch_norm(module, dist):
    """``module`` with every BatchNorm normalising over the global batch (``--sync-bn``), as one process does:
    ``torch.nn.SyncBatchNorm`` on GPUs, ``GlooSyncBatchNorm`` on the CPU; unchanged in one process."""
    if dist.world_size == 1:
        return module
    if dist.device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced.requires_grad_(child.weight.requires_grad))
        else:
            sync_batch_norm(child, dist)
    return module


@torch.no_grad()
def shuffled_forward(encoder, images, dist):
    """MoCo's shuffle-BN over ranks (He et al., CVPR 2020): ``encoder``'s outputs for this rank's ``images``,
    computed on the rank a random permutation of the global batch sends each image to, so that a rank's key
    BatchNorm normalises a random part of the global batch, not the very images its query BatchNorm saw. The
    permutation comes from the CPU generator, which every rank seeds alike each epoch and draws from alike, so it
    is the same everywhere without a message."""
    everything = all_gather_varlen(images, dist)                                  # (B, 3, S, S)
    order = torch.randperm(len(everything)).to(images.device)                     # (B,)
    sent = everything[shard_batch(order, dist.rank, dist.world_size)]            # (~B / world_size, 3, S, S)
    if images.is_contiguous(memory_format=torch.channels_last):
        sent = sent.contiguous(memory_format=torch.channels_last)
    mine = shard_batch(torch.arange(len(everything), device=images.device), dist.rank, dist.world_size)
    outputs = []
    for shuffled in encoder(sent):                                                # (~B / world_size, D), (.., C)
        gathered = all_gather_varlen(shuffled, dist)                              # (B, ...) in the shuffled order
        unshuffled = torch.empty_like(gathered)
        unshuffled[order] = gathered                                              # (B, ...) in the batch's order
        outputs.append(unshuffled[mine])                                          # (len(images), ...)
    return tuple(outputs)
