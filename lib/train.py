"""One training epoch and the validation kNN (Kang et al., TGRS 2020, Algorithm 1; SPEC.md sections 4-8).

One loop serves both methods: MB writes the network's own embeddings into the memory with the
scheduled momentum, MU the key encoder's embeddings with momentum 0 (replacement).
"""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lib.knn import knn_predict
from lib.snca_loss import snca_loss

PROGRESS_EVERY = 10  # steps between loss read-outs on the progress bar


def train_one_epoch(model, memory, key_encoder, loader, optimizer, device, args, memory_momentum, desc=""):
    """Train over ``loader`` once; returns the mean of each loss term over the epoch's images."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss, loss_snca, loss_ce (sums)
    seen = 0
    progress = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for step, (images, labels, indices) in enumerate(progress):
        images, labels, indices = images.to(device), labels.to(device), indices.to(device)
        embeddings, logits = model(images)                                         # (B, D), (B, C)
        loss_snca = snca_loss(memory(embeddings, args.temperature), indices, memory.labels,
                              margin=args.margin / args.temperature)
        loss_ce = F.cross_entropy(logits, labels)
        loss = args.lambda_ * loss_snca + loss_ce
        # MU: the key encoder encodes the batch with its weights before this step's update (MoCo's order).
        writes = key_encoder(images)[0] if key_encoder is not None else embeddings  # (B, D)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if key_encoder is not None:
            key_encoder.update(model, args.ema_momentum)
        memory.update(indices, writes, memory_momentum)     # the next batch sees the updated memory

        totals += torch.stack([loss, loss_snca, loss_ce]).detach().double() * len(images)
        seen += len(images)
        if step % PROGRESS_EVERY == 0:  # .item() waits for the device: not on every step
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    loss, loss_snca, loss_ce = (totals / max(seen, 1)).tolist()
    return {"loss": loss, "loss_snca": loss_snca, "loss_ce": loss_ce}


@torch.inference_mode()
def extract_embeddings(model, loader, device):
    """Embeddings (N, D) and labels (N,) of a loader's images, in order, on ``device``."""
    model.eval()
    embeddings, labels = [], []
    for images, target, _ in loader:
        embeddings.append(model(images.to(device))[0])
        labels.append(target.to(device))
    return torch.cat(embeddings), torch.cat(labels)


def knn_accuracy(queries, query_labels, references, reference_labels, k):
    predicted = knn_predict(queries, references, reference_labels, k=k)
    return (predicted == query_labels).double().mean().item()


def validate(model, memory, val_loader, train_eval_loader, device, k):
    """Validation kNN accuracy with two references for the training set.

    ``bank``: the memory rows (the reference of MB); ``extracted``: training embeddings re-extracted
    with the current network and the eval transform (the reference of MU).
    """
    queries, query_labels = extract_embeddings(model, val_loader, device)
    references, reference_labels = extract_embeddings(model, train_eval_loader, device)
    return {
        "bank": knn_accuracy(queries, query_labels, memory.memory, memory.labels, k),
        "extracted": knn_accuracy(queries, query_labels, references, reference_labels, k),
    }
