"""Data-parallel training over processes started by ``torchrun`` (NCCL on CUDA, Gloo on the CPU).

Every rank holds the whole memory and applies the same update, so the memory stays bitwise identical
everywhere: each rank trains on its contiguous shard of the global batch, the (index, embedding) writes
of all ranks are gathered in rank order, and every rank calls ``memory.step`` with the full batch,
exactly as one process would. Sharding the memory instead would turn the loss against all N rows into
a collective at every step; the memory is small (NWPU-RESISC45: 22,005 x 128 float32 = 11 MB), so that
is only worth it when the memory no longer fits one GPU. With one process every helper is the identity
and ``torch.distributed`` is never touched.

Also here: the agreement helpers of the engine (rank 0 decides, ranks take turns, flags reduced over
ranks). The network across ranks (DDP, SyncBN, shuffle-BN) is ``lib.distributed.parallel``.
"""
import os
from typing import NamedTuple

import torch
import torch.distributed as torch_dist

from errors import InputError
from lib.eval.knn import CHUNK_ELEMENTS, knn_predict
from lib.training.device import resolve_device

INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-width integers, by bytes


class Dist(NamedTuple):
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool  # rank 0: the one that logs, evaluates for the record and writes checkpoints


def init_distributed(device_arg=None):
    """The process group of a ``torchrun`` launch (``WORLD_SIZE`` > 1), or a single process.

    Under torchrun the device is ``cuda:LOCAL_RANK`` (the index in ``device_arg`` is ignored) with the
    NCCL backend, or the CPU with Gloo when ``device_arg`` is 'cpu' or CUDA is missing.
    """
    device = resolve_device(device_arg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(0, 1, 0, device, True)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=device)
    else:
        torch_dist.init_process_group("gloo", rank=rank, world_size=world_size)
    return Dist(rank, world_size, local_rank, device, rank == 0)


def run_on_ranks(fn, args):
    """``fn(args, dist)`` in this process, alone or as one rank of a torchrun launch (``args.device``); the process
    group is destroyed afterwards, also after an error."""
    dist = init_distributed(args.device)
    try:
        return fn(args, dist)
    finally:
        cleanup(dist)


def single_process(device):
    """The ``Dist`` of a run that torchrun did not start."""
    return Dist(0, 1, 0, device, True)


def cleanup(dist):
    """Destroy the process group, if one was made (call it on every rank, also after an error)."""
    if dist.world_size > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def shard_batch(indices, rank, world_size):
    """This rank's contiguous slice of a global batch (``torch.tensor_split``: sizes differ by at most 1).

    The global batch is the concatenation of the slices in rank order, so ``-b`` stays the global batch
    size and every image is trained on once per epoch, by one rank. A batch with fewer images than ranks
    (the last, partial one) leaves some ranks an empty slice, returned as is. Such a rank must still
    join every collective of the step (DDP's gradient all-reduce, ``gather_memory_writes`` with its
    (0, D) embeddings) or the others wait forever; simplest is that all ranks skip the batch together,
    a decision each can take alone from ``len(indices) < world_size``.
    """
    return indices.tensor_split(world_size)[rank]                                 # (~B / world_size,)


def gather_list(tensor, dist):
    """The tensor of every rank, in rank order; first dimensions may differ, the rest may not."""
    tensor = tensor.to(dist.device)
    if dist.world_size == 1:
        return [tensor]
    # Collectives need equal shapes: share the lengths, pad to the longest, gather, cut back.
    length = torch.tensor([len(tensor)], device=dist.device)                      # (1,)
    lengths = [torch.empty_like(length) for _ in range(dist.world_size)]
    torch_dist.all_gather(lengths, length)
    lengths = [int(n) for n in lengths]
    if max(lengths) == 0:
        return [tensor] * dist.world_size
    padded = tensor.new_zeros((max(lengths), *tensor.shape[1:]))                  # (L, ...)
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in lengths]
    torch_dist.all_gather(parts, padded)
    return [part[:n] for part, n in zip(parts, lengths)]


def all_gather_varlen(tensor, dist):
    """The concatenation over ranks, in rank order, of tensors whose first dimension may differ."""
    return torch.cat(gather_list(tensor, dist))                                   # (sum of lengths, ...)


def gather_memory_writes(indices, features, dist):
    """The (index, embedding) writes of the whole global batch, in rank order, on every rank.

    Every rank then calls ``memory.step(model, all_indices, all_features)`` with the same tensors,
    which is the single-process update of the global batch, so the memories stay bitwise identical.
    """
    return all_gather_varlen(indices.long(), dist), all_gather_varlen(features.detach(), dist)  # (B,), (B, D)


def bits(tensor):
    """The tensor's raw bits as integers of the same width (NaN equals NaN, 0.0 differs from -0.0)."""
    tensor = tensor.contiguous()
    return tensor.view(INT_VIEWS[tensor.element_size()]) if tensor.is_floating_point() else tensor


@torch.no_grad()
def memory_checksum(memory_tensor):
    """A position-weighted sum of the memory's bits in wrapping int64, exact in any order: 8 bytes to compare."""
    flat = bits(memory_tensor).flatten().long()                                   # (N * D,)
    weights = torch.arange(1, len(flat) + 1, device=flat.device)                  # (N * D,)
    return (flat * weights).sum().reshape(1)                                      # (1,)


def assert_same_on_all_ranks(tensor, dist, what):
    """Raise RuntimeError on every rank naming ``what`` unless all ranks hold the same bits (the whole tensor is
    gathered: for the memory, pass ``memory_checksum`` of each of its tensors)."""
    parts = gather_list(bits(tensor).flatten(), dist)
    differ = [rank for rank, part in enumerate(parts) if not torch.equal(part, parts[0])]
    if differ:
        raise RuntimeError(f"{what} differs between ranks: ranks {differ} do not match rank 0")


def sharded_knn_predict(queries, references, reference_labels, k, dist, chunk_elements=CHUNK_ELEMENTS):
    """``knn_predict`` for all queries, each rank taking its ``tensor_split`` shard of them.

    A prediction depends on its own query only, and ``knn_predict`` ranks by exact distances whatever
    bits the matrix product gives a row, so the gathered result equals the single process's.
    Every rank needs all references (the memory is already everywhere).
    """
    shard = queries.tensor_split(dist.world_size)[dist.rank]                      # (~Q / world_size, D)
    predictions = knn_predict(shard, references, reference_labels, k, chunk_elements)  # (~Q / world_size,)
    return all_gather_varlen(predictions, dist)                                   # (Q,)


def broadcast_object(obj, dist):
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if dist.world_size == 1:
        return obj
    box = [obj if dist.is_main else None]
    torch_dist.broadcast_object_list(box, src=0, device=dist.device)
    return box[0]


def barrier(dist):
    """Wait until every rank arrives here."""
    if dist.world_size > 1:
        torch_dist.barrier()


def on_main(dist, fn, *args):
    """``fn(*args)`` run by rank 0 alone (a check of every file, a new run folder's name), its result or its
    InputError on every rank, so that all ranks go on or stop together."""
    result, error = None, None
    if dist.is_main:
        try:
            result = fn(*args)
        except InputError as raised:
            error = raised
    result, error = broadcast_object((result, error), dist)
    if error is not None:
        raise error
    return result


def in_turn(dist, fn, *args):
    """``fn(*args)`` on every rank: rank 0 first, then the first rank of each other node, then the rest, with a
    barrier between; what the first writes (a download, the decoded-image cache, the synthetic dataset) the later
    ones find, on a shared or a node-local disk, and no two ranks write the same file at once."""
    turn = 0 if dist.is_main else 1 if dist.local_rank == 0 else 2
    result = None
    for now in range(3):
        if now == turn:
            result = fn(*args)
        barrier(dist)
    return result


def reduce_over_ranks(tensor, dist, op="sum"):
    """The elementwise sum (or with ``op='max'``, maximum) over ranks, on every rank; ``tensor`` in one process."""
    if dist.world_size > 1:
        tensor = tensor.to(dist.device).clone()
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX if op == "max" else torch_dist.ReduceOp.SUM)
    return tensor


def any_rank(flag, dist):
    """True on every rank when ``flag`` (a stop request) is true on any; ``bool(flag)`` read once per call."""
    return bool(reduce_over_ranks(torch.tensor([int(bool(flag))]), dist, "max"))
