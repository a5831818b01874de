"""One training epoch and the validation kNN (Kang et al., TGRS 2020, Algorithm 1; SPEC.md sections 4-8).

One loop serves both methods and the paper's baselines: MB writes the network's own embeddings into
the memory with the scheduled momentum, MU the key encoder's embeddings with momentum 0
(replacement); D-CNN and Triplet (SPEC.md section 9) use no memory. Batches arrive as uint8 images on
the device; augmentation and normalisation run there on the whole batch.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.augment import eval_preprocess, train_augment
from lib.dcnn_loss import dcnn_loss
from lib.interrupt import TrainingInterrupted
from lib.knn import knn_predict
from lib.triplet_loss import triplet_loss

PROGRESS_EVERY = 10  # steps between loss read-outs on the progress bar (each waits for the device)


# The metric term of each loss (logged as loss_<term>), and whether L_CE joins it (SPEC.md section 9).
METRIC_TERM = {"snca-ce": "snca", "snca": "snca", "d-cnn": "dcnn", "triplet": "triplet"}
WITH_CE = {"snca-ce": True, "snca": False, "d-cnn": True, "triplet": False}


def train_one_epoch(model, memory, key_encoder, batches, optimizer, args, memory_momentum, precision, desc="",
                    position=None, stop=False, triplets=None):
    """Train over ``batches`` once; returns the mean of each loss term over the epoch's images.

    ``precision`` holds the run's autocast context and gradient scaler (``lib.device``); the SNCA
    loss and the memory stay float32 inside it. ``position`` = (steps done, loss sums, images seen)
    continues an interrupted epoch; when ``stop`` turns true, the loop raises ``TrainingInterrupted``
    with its position after the step it is in. ``triplets`` = (positives, negatives) of every
    anchor, drawn for the epoch, for ``--method triplet``.
    """
    autocast, scaler, memory_format = precision
    term = METRIC_TERM[args.method]
    model.train()
    first, totals, seen = position or (0, 0.0, 0)  # totals: (3,) sums of loss, loss_<term>, loss_ce, on the device
    progress = tqdm(batches.iterate(first), desc=desc, total=len(batches), initial=first, leave=False,
                    dynamic_ncols=True)
    for step, (images, labels, indices) in enumerate(progress, start=first):
        if triplets is not None:  # anchors, positives and negatives through one forward pass
            others = indices.cpu()
            images = torch.cat([images, batches.images_at(triplets[0][others]), batches.images_at(triplets[1][others])])
        images = train_augment(images).contiguous(memory_format=memory_format)   # (B, 3, S, S); triplet: (3B, ...)
        with autocast:
            embeddings, logits = model(images)                                          # (B, D), (B, C)
            # MU: the key encoder encodes the batch with its weights before this step's update (MoCo's order).
            writes = key_encoder(images)[0] if key_encoder is not None else embeddings   # (B, D)
            loss_ce = F.cross_entropy(logits, labels) if WITH_CE[args.method] else logits.new_zeros(())
        loss_metric = metric_loss(args, memory, embeddings.float(), labels, indices)
        loss = args.lambda_ * loss_metric + loss_ce if term == "snca" else loss_metric + loss_ce
        check_finite(loss_metric, loss_ce, writes, where=f"{desc or 'training'}, step {step + 1}", term=term)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if key_encoder is not None:
            key_encoder.update(model, args.ema_momentum)
        if memory is not None:
            memory.update(indices, writes, memory_momentum)     # the next batch sees the updated memory

        totals = totals + torch.stack([loss, loss_metric, loss_ce.float()]).detach().double() * len(labels)
        seen += len(labels)
        if step % PROGRESS_EVERY == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if stop:
            progress.close()
            raise TrainingInterrupted(step + 1, totals, seen)
    loss, loss_metric, loss_ce = (totals / max(seen, 1)).tolist()
    return {"loss": loss, f"loss_{term}": loss_metric, "loss_ce": loss_ce}


def metric_loss(args, memory, embeddings, labels, indices):
    """The metric-learning term of ``args.method`` for the batch (float32)."""
    if args.method in ("snca-ce", "snca"):
        return memory(embeddings, indices, args.temperature, args.margin / args.temperature)
    if args.method == "d-cnn":
        return args.dcnn_weight * dcnn_loss(embeddings, labels, args.dcnn_tau, args.dcnn_beta)
    anchors, positives, negatives = embeddings.chunk(3)                                # (B, D) each
    return triplet_loss(anchors, positives, negatives, args.triplet_margin)


class NonFiniteError(FloatingPointError):
    """A loss term or an embedding to be written into the memory is NaN or infinite."""


def check_finite(loss_metric, loss_ce, writes, where, term="snca"):
    """Stop before the optimizer step and the memory update if anything is not finite.

    One device sync per step (as a float16 gradient scaler makes anyway): a NaN must never reach
    the weights or a memory row.
    """
    finite = torch.stack([loss_metric.detach().isfinite(), loss_ce.detach().isfinite(),
                          writes.detach().isfinite().all()]).tolist()
    if not all(finite):
        names = [name for name, ok in zip((f"loss_{term}", "loss_ce", "embeddings"), finite) if not ok]
        raise NonFiniteError(f"non-finite {', '.join(names)} at {where}: stopped before the optimizer step and "
                             "the memory update; the last checkpoint is the last good state")


@torch.inference_mode()
def extract_embeddings(model, batches, precision):
    """Float32 embeddings (N, D) and labels (N,) of the batches' images, in order, on the device."""
    autocast, _, memory_format = precision
    model.eval()
    embeddings, labels = [], []
    for images, target, _ in batches:
        with autocast:
            embeddings.append(model(eval_preprocess(images).contiguous(memory_format=memory_format))[0].float())
        labels.append(target)
    return torch.cat(embeddings), torch.cat(labels)


def knn_accuracy(queries, query_labels, references, reference_labels, k):
    predicted = knn_predict(queries, references.float(), reference_labels, k=k)
    return (predicted == query_labels).double().mean().item()


def validate(model, memory, val_batches, train_batches, k, precision):
    """Validation kNN accuracy with two references for the training set.

    ``bank``: the memory rows (the reference of MB; None without a memory); ``extracted``: training
    embeddings re-extracted with the current network and the eval preprocessing (the reference of MU).
    """
    queries, query_labels = extract_embeddings(model, val_batches, precision)
    references, reference_labels = extract_embeddings(model, train_batches, precision)
    return {
        "bank": knn_accuracy(queries, query_labels, memory.memory, memory.labels, k) if memory is not None else None,
        "extracted": knn_accuracy(queries, query_labels, references, reference_labels, k),
    }
