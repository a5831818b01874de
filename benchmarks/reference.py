"""The reference implementation's approach, re-implemented faithfully for side-by-side benchmarks.

Per-epoch PIL decoding with torchvision's PIL transforms in loader workers, the SNCA loss written
as the authors' code writes it (several B x N matrices, the label comparison as int64), and
validation kNN with scikit-learn on the CPU. Not used by training; kept only to measure against.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from datasets import load_rgb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_transform(size):
    return T.Compose([T.Resize((size, size)), T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def eval_transform(size):
    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(MEAN, STD)])


class PILDataset(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label, index


def loader(samples, transform, batch_size, num_workers, shuffle=False):
    return DataLoader(PILDataset(samples, transform), batch_size=batch_size, shuffle=shuffle,
                      num_workers=num_workers, persistent_workers=False)


def reference_snca_loss(x, indexes, labels, margin=0.0):
    """The reference's loss on x = f @ M.T / T (B, N): exp of every logit, int64 label comparison."""
    batch, n = x.shape
    exp = torch.exp(x)
    y = torch.index_select(labels, 0, indexes).view(batch, 1)
    same = y.repeat(1, n).eq_(labels)
    exp = exp.scatter(1, indexes.view(-1, 1), 0)
    p = torch.mul(exp, same.float()).sum(dim=1)
    z = exp.sum(dim=1)
    z_exclude = z - p
    p = p.div(math.exp(margin))
    z = z_exclude + p
    prob = torch.div(p, z)
    prob_masked = torch.masked_select(prob, prob.ne(0))
    return -prob_masked.log().sum(0) / batch


def sklearn_knn(queries, references, labels, k=10):
    classifier = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(np.asarray(references), np.asarray(labels))
    return classifier.predict(np.asarray(queries))


def reference_train_epoch(model, memory, labels, key_encoder, train_loader, optimizer, temperature=0.05,
                          momentum=0.5, ema=0.999):
    """One training epoch the reference's way: MB, or MU with ``key_encoder``."""
    model.train()
    for images, target, index in train_loader:
        embedding, logits = model(images)
        loss = reference_snca_loss(embedding @ memory.T / temperature, index, labels) + F.cross_entropy(logits,
                                                                                                         target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if key_encoder is None:
                rows = memory[index] * momentum + embedding.detach() * (1 - momentum)
            else:
                for k, q in zip(key_encoder.parameters(), model.parameters()):
                    k.mul_(ema).add_(q.detach(), alpha=1 - ema)
                key_encoder.train()
                rows = key_encoder(images)[0]
            memory[index] = F.normalize(rows, dim=1)


def reference_validate(model, memory, labels, val_loader, train_eval_loader=None):
    """The reference's validation: kNN of the validation embeddings against the memory bank (MB) or against
    re-extracted training embeddings (MU, ``train_eval_loader``), with scikit-learn."""
    model.eval()
    with torch.no_grad():
        val = [(model(x)[0], y) for x, y, _ in val_loader]
        reference = [(model(x)[0], y) for x, y, _ in train_eval_loader] if train_eval_loader else None
    queries, query_labels = torch.cat([v for v, _ in val]), torch.cat([y for _, y in val])
    refs, ref_labels = (memory, labels) if reference is None else (torch.cat([r for r, _ in reference]),
                                                                    torch.cat([y for _, y in reference]))
    return float((sklearn_knn(queries, refs, ref_labels) == query_labels.numpy()).mean())
