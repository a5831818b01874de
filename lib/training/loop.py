"""One training epoch and the validation kNN (docs/method.md sections 1 and 4-8).

One loop serves every method of ``lib.losses.METHODS`` and every memory of ``lib.memories.MEMORIES``: what differs
is behind the run's ``lib.losses.Loss`` and the memory's interface (``lib.memories.base``). Batches arrive as uint8
images on the device; augmentation and normalisation run there on the whole batch.
"""
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.augment import eval_preprocess
from lib.distributed.parallel import BatchPart
from lib.distributed.ranks import (
    all_gather_varlen,
    any_rank,
    gather_memory_writes,
    reduce_over_ranks,
    sharded_knn_predict,
    single_process,
)
from lib.training.interrupt import TrainingInterrupted

PROGRESS_EVERY = 10  # steps between loss read-outs on the progress bar (each waits for the device)


def train_one_epoch(model, memory, batches, optimizer, loss_fn, precision, draws=None, desc="", position=None,
                    stop=False, dist=None):
    """Train over ``batches`` once with ``loss_fn`` (the run's ``lib.losses.Loss``) and ``memory`` (None for a
    method without one); returns the mean of each loss term over the epoch's images.

    ``precision`` holds the run's autocast context and gradient scaler (``lib.training.device``); the SNCA loss and
    the memory stay float32 inside it. ``draws``: the epoch's companions of every image (``loss_fn.draw``: the
    triplets' positives and negatives), whose images follow the batch's own through the network.
    ``position`` = (steps done, loss sums, images seen) continues an interrupted epoch; when ``stop`` turns
    true, the loop raises ``TrainingInterrupted`` with its position after the step it is in. Under torchrun
    (``dist``) ``model`` is the DistributedDataParallel network, ``batches`` yields this rank's part of every
    global batch, and each step is the one-process step of the global batch (``lib.distributed.parallel.BatchPart``).
    """
    autocast, scaler, memory_format = precision
    dist = dist or single_process(batches.device)
    copies = 1 + (len(draws) if draws is not None else 0)  # images through the network per batch image
    cross_entropy = F.cross_entropy if loss_fn.with_ce else lambda logits, labels: logits.new_zeros(())
    model.train()
    first, totals, seen = position or (0, 0.0, 0)  # totals: (3,) sums of loss, loss_<term>, loss_ce, on the device
    if not dist.is_main:  # a resumed epoch's sums so far are all ranks' together, carried by rank 0 alone
        totals, seen = 0.0, 0
    progress = tqdm(batches.with_companions(first, draws), desc=desc, total=len(batches), initial=first, leave=False,
                    dynamic_ncols=True, disable=not dist.is_main or not sys.stderr.isatty())  # a log gets epoch lines
    for step, (images, labels, indices) in enumerate(progress, start=first):
        part = BatchPart(len(labels), batches.global_size(step), dist)                # this rank's part of B
        images = part.augment(images, copies, batches.pipeline).contiguous(
            memory_format=memory_format)                                                # (copies * B, C_in, S, S)
        with autocast:
            embeddings, logits = model(images)                                          # (B, D), (B, C)
            writes = memory.writes(images, embeddings) if memory is not None else embeddings  # (B, D)
            loss_ce = part.mean(cross_entropy, logits, labels)                          # L_CE (float32)
        # the metric term against the memory as it is before this step (SNCA: docs/method.md section 4)
        loss_metric = part.mean(loss_fn.metric, embeddings.float(), labels, indices, memory)
        loss = loss_fn.weight * loss_metric + loss_ce                                   # lambda * L_SNCA + L_CE
        check_finite(loss_metric, loss_ce, writes, where=f"{desc or 'training'}, step {step + 1}",
                     term=loss_fn.term, dist=dist)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(part.weight(loss)).backward()
        scaler.step(optimizer)
        scaler.update()
        if memory is not None:  # every rank steps with the whole global batch: the memories stay identical
            memory.step(model, *gather_memory_writes(indices, writes, dist))           # the next batch sees it

        totals = totals + torch.stack([loss, loss_metric, loss_ce.float()]).detach().double() * len(labels)
        seen += len(labels)
        if step % PROGRESS_EVERY == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if any_rank(stop, dist):
            progress.close()
            raise TrainingInterrupted(step + 1, *epoch_sums(totals, seen, dist))
    totals, seen = epoch_sums(totals, seen, dist)
    loss, loss_metric, loss_ce = (totals / max(seen, 1)).tolist()
    return {"loss": loss, f"loss_{loss_fn.term}": loss_metric, "loss_ce": loss_ce}


def epoch_sums(totals, seen, dist):
    """The loss sums (3,) and the number of images of all ranks together."""
    if dist.world_size == 1:
        return totals, seen
    both = torch.cat([torch.zeros(3, dtype=torch.float64, device=dist.device) + totals,
                      torch.tensor([float(seen)], dtype=torch.float64, device=dist.device)])  # (4,)
    both = reduce_over_ranks(both, dist)
    return both[:3], int(both[3])


class NonFiniteError(FloatingPointError):
    """A loss term or an embedding to be written into the memory is NaN or infinite."""


def check_finite(loss_metric, loss_ce, writes, where, term="snca", dist=None):
    """Stop before the optimizer step and the memory update if anything is not finite (on any rank: all stop).

    One device sync per step (as a float16 gradient scaler makes anyway): a NaN must never reach
    the weights or a memory row.
    """
    bad = ~torch.stack([loss_metric.detach().isfinite(), loss_ce.detach().isfinite(),
                        writes.detach().isfinite().all()])                                   # (3,)
    bad = reduce_over_ranks(bad.int(), dist, "max") if dist is not None else bad
    if any(bad.tolist()):
        names = [name for name, no in zip((f"loss_{term}", "loss_ce", "embeddings"), bad.tolist()) if no]
        raise NonFiniteError(f"non-finite {', '.join(names)} at {where}: stopped before the optimizer step and "
                             "the memory update; the last checkpoint is the last good state")


@torch.inference_mode()
def extract_embeddings(model, batches, precision, dist=None):
    """Float32 embeddings (N, D) and labels (N,) of the batches' images, in order, on the device.

    Under torchrun each rank embeds its part of every batch; the parts are gathered and put back in order.
    """
    autocast, _, memory_format = precision
    model.eval()
    preprocess = getattr(batches, "pipeline", None)  # N-band images' pipeline, or None: the reference RGB
    preprocess = preprocess.eval if preprocess is not None else eval_preprocess
    embeddings, labels, indices = [], [], []
    for images, target, index in batches:
        with autocast:
            embeddings.append(model(preprocess(images).contiguous(memory_format=memory_format))[0].float())
        labels.append(target)
        indices.append(index)
    embeddings, labels = torch.cat(embeddings), torch.cat(labels)                   # (n, D), (n,)
    if dist is None or dist.world_size == 1:
        return embeddings, labels
    order = all_gather_varlen(torch.cat(indices), dist).argsort()                   # (N,)
    return all_gather_varlen(embeddings, dist)[order], all_gather_varlen(labels, dist)[order]


def knn_accuracy(queries, query_labels, references, reference_labels, k, dist=None):
    """Under torchrun each rank predicts its share of the queries; all get every prediction."""
    dist = dist or single_process(queries.device)
    predicted = sharded_knn_predict(queries, references.float(), reference_labels, k, dist)
    return (predicted == query_labels).double().mean().item()


def validate(model, memory, val_batches, train_batches, k, precision, dist=None, extracted=True):
    """Validation kNN accuracy with two references for the training set.

    ``bank``: the memory's rows (``reference_rows``: MB's and MU's; None for a memory without, or none);
    ``extracted``: training embeddings re-extracted with the current network and the eval preprocessing (an
    inference pass over the training split; None when ``extracted`` is false). Under torchrun the ranks share the
    work and all return the one-process accuracies.
    """
    queries, query_labels = extract_embeddings(model, val_batches, precision, dist)
    rows = memory.reference_rows() if memory is not None else None
    return {
        "bank": knn_accuracy(queries, query_labels, *rows, k, dist) if rows is not None else None,
        "extracted": knn_accuracy(queries, query_labels, *extract_embeddings(model, train_batches, precision, dist),
                                  k, dist) if extracted else None,
    }
