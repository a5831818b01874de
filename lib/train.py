"""One training epoch and the validation kNN (Kang et al., TGRS 2020, Algorithm 1; docs/method.md sections 4-8).

One loop serves both methods and the paper's baselines: MB writes the network's own embeddings into
the memory with the scheduled momentum, MU the key encoder's embeddings with momentum 0
(replacement); D-CNN and Triplet (docs/method.md section 9) use no memory. Batches arrive as uint8 images on
the device; augmentation and normalisation run there on the whole batch.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.augment import draw_params, eval_preprocess, train_augment
from lib.dcnn_loss import dcnn_loss
from lib.distributed import (
    all_gather_varlen,
    any_rank,
    gather_memory_writes,
    reduce_over_ranks,
    shard_batch,
    sharded_knn_predict,
    single_process,
)
from lib.interrupt import TrainingInterrupted
from lib.triplet_loss import triplet_loss

PROGRESS_EVERY = 10  # steps between loss read-outs on the progress bar (each waits for the device)


# The metric term of each loss (logged as loss_<term>), and whether L_CE joins it (docs/method.md section 9).
METRIC_TERM = {"snca-ce": "snca", "snca": "snca", "d-cnn": "dcnn", "triplet": "triplet"}
WITH_CE = {"snca-ce": True, "snca": False, "d-cnn": True, "triplet": False}


def train_one_epoch(model, memory, key_encoder, batches, optimizer, args, memory_momentum, precision, desc="",
                    position=None, stop=False, triplets=None, dist=None):
    """Train over ``batches`` once; returns the mean of each loss term over the epoch's images.

    ``precision`` holds the run's autocast context and gradient scaler (``lib.device``); the SNCA
    loss and the memory stay float32 inside it. ``position`` = (steps done, loss sums, images seen)
    continues an interrupted epoch; when ``stop`` turns true, the loop raises ``TrainingInterrupted``
    with its position after the step it is in. ``triplets`` = (positives, negatives) of every
    anchor, drawn for the epoch, for ``--method triplet``.

    Under torchrun (``dist``, ``lib.distributed``) ``model`` is the DistributedDataParallel network,
    ``batches`` yields this rank's part of every global batch, and each step is the one-process step of
    the global batch: the same augmentation draws, the gradient of the global mean, and the memory update
    of all ranks' writes on every rank; the stop and a non-finite value are agreed by all ranks.
    """
    autocast, scaler, memory_format = precision
    dist = dist or single_process(batches.device)
    term = METRIC_TERM[args.method]
    model.train()
    first, totals, seen = position or (0, 0.0, 0)  # totals: (3,) sums of loss, loss_<term>, loss_ce, on the device
    if not dist.is_main:  # a resumed epoch's sums so far are all ranks' together, carried by rank 0 alone
        totals, seen = 0.0, 0
    progress = tqdm(batches.iterate(first), desc=desc, total=len(batches), initial=first, leave=False,
                    dynamic_ncols=True, disable=not dist.is_main)
    for step, (images, labels, indices) in enumerate(progress, start=first):
        size = batches.global_size(step)                                            # B over all ranks
        if triplets is not None:  # anchors, positives and negatives through one forward pass
            others = indices.cpu()
            images = torch.cat([images, batches.images_at(triplets[0][others]), batches.images_at(triplets[1][others])])
        images = augment(images, size, dist, copies=1 if triplets is None else 3, pipeline=batches.pipeline).contiguous(
            memory_format=memory_format)                                            # (B, 3, S, S); triplet: (3B, ...)
        with autocast:
            embeddings, logits = model(images)                                          # (B, D), (B, C)
            # MU: the key encoder encodes the batch with its weights before this step's update (MoCo's order).
            writes = key_encoder(images)[0] if key_encoder is not None else embeddings   # (B, D)
            loss_ce = ce_loss(args, logits, labels)
        loss_metric = metric_loss(args, memory, embeddings.float(), labels, indices)
        loss = args.lambda_ * loss_metric + loss_ce if term == "snca" else loss_metric + loss_ce
        check_finite(loss_metric, loss_ce, writes, where=f"{desc or 'training'}, step {step + 1}", term=term,
                     dist=dist)

        optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients: weighting each rank's mean by its share of the global batch (1 in
        # one process) makes that the gradient of the global batch's mean, however unequal the parts.
        scaler.scale(loss * (len(labels) * dist.world_size / size)).backward()
        scaler.step(optimizer)
        scaler.update()
        if key_encoder is not None:
            key_encoder.update(model, args.ema_momentum)
        if memory is not None:  # every rank writes the whole global batch, so the memories stay identical
            memory.update(*gather_memory_writes(indices, writes, dist), memory_momentum)  # the next batch sees it

        totals = totals + torch.stack([loss, loss_metric, loss_ce.float()]).detach().double() * len(labels)
        seen += len(labels)
        if step % PROGRESS_EVERY == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if any_rank(stop, dist):
            progress.close()
            raise TrainingInterrupted(step + 1, *epoch_sums(totals, seen, dist))
    totals, seen = epoch_sums(totals, seen, dist)
    loss, loss_metric, loss_ce = (totals / max(seen, 1)).tolist()
    return {"loss": loss, f"loss_{term}": loss_metric, "loss_ce": loss_ce}


def augment(images, size, dist, copies=1, pipeline=None):
    """``train_augment`` of this rank's images with the random draws of one process for the whole global batch
    (``size`` images, ``copies`` times for the triplet's anchors, positives and negatives), of which the rank
    applies those of its own rows: the same augmented images as one process, whatever the world size.
    ``pipeline``: N-band images' (``datasets.augment.BandPipeline``); None, the reference RGB one."""
    train, draw = (pipeline.train, pipeline.draw) if pipeline is not None else (train_augment, draw_params)
    if dist.world_size == 1:
        return train(images)
    rows = shard_batch(torch.arange(size, device=images.device), dist.rank, dist.world_size)    # (b,)
    rows = torch.cat([rows + copy * size for copy in range(copies)])                          # (copies * b,)
    params = {name: value[rows] for name, value in draw(copies * size, images.device).items()}
    return train(images, params=params)


def epoch_sums(totals, seen, dist):
    """The loss sums (3,) and the number of images of all ranks together."""
    if dist.world_size == 1:
        return totals, seen
    both = torch.cat([torch.zeros(3, dtype=torch.float64, device=dist.device) + totals,
                      torch.tensor([float(seen)], dtype=torch.float64, device=dist.device)])  # (4,)
    both = reduce_over_ranks(both, dist)
    return both[:3], int(both[3])


def ce_loss(args, logits, labels):
    """L_CE of the batch, when the method has it; an empty part of a batch: 0 with a path to FC2 (``metric_loss``)."""
    if not WITH_CE[args.method]:
        return logits.new_zeros(())
    return F.cross_entropy(logits, labels) if len(labels) else logits.sum()


def metric_loss(args, memory, embeddings, labels, indices):
    """The metric-learning term of ``args.method`` for the batch (float32)."""
    if not len(labels):  # a rank's empty part of a batch smaller than the world: 0, but every parameter still
        return embeddings.sum()  # gets a (zero) gradient, so the rank joins DDP's all-reduce
    if args.method in ("snca-ce", "snca"):
        return memory(embeddings, indices, args.temperature, args.margin / args.temperature)
    if args.method == "d-cnn":
        return args.dcnn_weight * dcnn_loss(embeddings, labels, args.dcnn_tau, args.dcnn_beta)
    anchors, positives, negatives = embeddings.chunk(3)                                # (B, D) each
    return triplet_loss(anchors, positives, negatives, args.triplet_margin)


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


def validate(model, memory, val_batches, train_batches, k, precision, dist=None):
    """Validation kNN accuracy with two references for the training set.

    ``bank``: the memory rows (the reference of MB; None without a memory); ``extracted``: training
    embeddings re-extracted with the current network and the eval preprocessing (the reference of MU).
    Under torchrun the ranks share the work and all return the one-process accuracies.
    """
    queries, query_labels = extract_embeddings(model, val_batches, precision, dist)
    references, reference_labels = extract_embeddings(model, train_batches, precision, dist)
    return {
        "bank": knn_accuracy(queries, query_labels, memory.memory, memory.labels, k, dist)
        if memory is not None else None,
        "extracted": knn_accuracy(queries, query_labels, references, reference_labels, k, dist),
    }
