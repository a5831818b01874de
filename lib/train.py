"""One training epoch and the validation kNN (Kang et al., TGRS 2020, Algorithm 1; SPEC.md sections 4-8).

One loop serves both methods: MB writes the network's own embeddings into the memory with the
scheduled momentum, MU the key encoder's embeddings with momentum 0 (replacement). Batches arrive
as uint8 images on the device; augmentation and normalisation run there on the whole batch.
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.augment import eval_preprocess, train_augment
from lib.interrupt import TrainingInterrupted
from lib.knn import knn_predict

PROGRESS_EVERY = 10  # steps between loss read-outs on the progress bar (each waits for the device)


def train_one_epoch(model, memory, key_encoder, batches, optimizer, args, memory_momentum, precision, desc="",
                    position=None, stop=False):
    """Train over ``batches`` once; returns the mean of each loss term over the epoch's images.

    ``precision`` holds the run's autocast context and gradient scaler (``lib.device``); the SNCA
    loss and the memory stay float32 inside it. ``position`` = (steps done, loss sums, images seen)
    continues an interrupted epoch; when ``stop`` turns true, the loop raises ``TrainingInterrupted``
    with its position after the step it is in.
    """
    autocast, scaler, memory_format = precision
    model.train()
    first, totals, seen = position or (0, 0.0, 0)  # totals: (3,) sums of loss, loss_snca, loss_ce, on the device
    progress = tqdm(batches.iterate(first), desc=desc, total=len(batches), initial=first, leave=False,
                    dynamic_ncols=True)
    for step, (images, labels, indices) in enumerate(progress, start=first):
        images = train_augment(images).contiguous(memory_format=memory_format)   # (B, 3, S, S)
        with autocast:
            embeddings, logits = model(images)                                          # (B, D), (B, C)
            # MU: the key encoder encodes the batch with its weights before this step's update (MoCo's order).
            writes = key_encoder(images)[0] if key_encoder is not None else embeddings   # (B, D)
            loss_ce = F.cross_entropy(logits, labels)
        loss_snca = memory(embeddings, indices, args.temperature, args.margin / args.temperature)
        loss = args.lambda_ * loss_snca + loss_ce
        check_finite(loss_snca, loss_ce, writes, where=f"{desc or 'training'}, step {step + 1}")

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if key_encoder is not None:
            key_encoder.update(model, args.ema_momentum)
        memory.update(indices, writes, memory_momentum)     # the next batch sees the updated memory

        totals = totals + torch.stack([loss, loss_snca, loss_ce]).detach().double() * len(images)
        seen += len(images)
        if step % PROGRESS_EVERY == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if stop:
            progress.close()
            raise TrainingInterrupted(step + 1, totals, seen)
    loss, loss_snca, loss_ce = (totals / max(seen, 1)).tolist()
    return {"loss": loss, "loss_snca": loss_snca, "loss_ce": loss_ce}


class NonFiniteError(FloatingPointError):
    """A loss term or an embedding to be written into the memory is NaN or infinite."""


def check_finite(loss_snca, loss_ce, writes, where):
    """Stop before the optimizer step and the memory update if anything is not finite.

    One device sync per step (as a float16 gradient scaler makes anyway): a NaN must never reach
    the weights or a memory row.
    """
    finite = torch.stack([loss_snca.detach().isfinite(), loss_ce.detach().isfinite(),
                          writes.detach().isfinite().all()]).tolist()
    if not all(finite):
        names = [name for name, ok in zip(("loss_snca", "loss_ce", "embeddings"), finite) if not ok]
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

    ``bank``: the memory rows (the reference of MB); ``extracted``: training embeddings re-extracted
    with the current network and the eval preprocessing (the reference of MU).
    """
    queries, query_labels = extract_embeddings(model, val_batches, precision)
    references, reference_labels = extract_embeddings(model, train_batches, precision)
    return {
        "bank": knn_accuracy(queries, query_labels, memory.memory, memory.labels, k),
        "extracted": knn_accuracy(queries, query_labels, references, reference_labels, k),
    }
