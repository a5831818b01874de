"""Batches of decoded uint8 images, labels and dataset indices, from memory or decoded per pass.

Both sources yield ``(images uint8 (B, 3, S, S), labels (B,), indices (B,))`` on the training device,
in the same order for the same generator state, so ``--cache none`` trains exactly as a cached run;
augmentation and normalisation then run on the whole batch there (``datasets.augment``).
"""
import math
import signal

import torch
from torch.utils.data import DataLoader

from datasets.folder import SceneDataset


def ignore_interrupts(worker_id):
    """Workers leave Ctrl-C to the main process, which finishes its step and saves (``lib.interrupt``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Batches:
    """The batch order: a new permutation per pass drawn from ``generator`` when shuffling (the training
    loop reseeds it every epoch), the dataset order otherwise; the last partial batch is kept."""

    def __init__(self, labels, batch_size, device, shuffle=False, generator=None):
        self.labels = torch.as_tensor(labels, dtype=torch.long).cpu()            # (N,)
        self.batch_size, self.device, self.shuffle, self.generator = batch_size, device, shuffle, generator

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size)

    def batch_indices(self, start=0):
        """The pass's batches of dataset indices, from batch ``start`` on (a run resumed mid-epoch)."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        return order.split(self.batch_size)[start:]

    def __iter__(self):
        return self.iterate()


class TensorBatches(Batches):
    """Batches gathered from decoded images held in CPU memory or on the device."""

    def __init__(self, images, labels, batch_size, device, shuffle=False, generator=None):
        super().__init__(labels, batch_size, device, shuffle, generator)
        self.images = images                                                     # (N, 3, S, S) uint8

    def iterate(self, start=0):
        pin = self.device.type == "cuda" and self.images.device.type == "cpu"
        for indices in self.batch_indices(start):                                # (B,)
            images = self.images[indices.to(self.images.device)]                 # (B, 3, S, S)
            if pin:
                images = images.pin_memory()
            yield (images.to(self.device, non_blocking=True), self.labels[indices].to(self.device),
                   indices.to(self.device))

    def images_at(self, indices):
        """uint8 images (B, 3, S, S) of dataset ``indices`` (CPU) on the device: the triplet loss's draws."""
        return self.images[indices.to(self.images.device)].to(self.device, non_blocking=True)


class DecodingBatches(Batches):
    """The same batches, decoded from the files in every pass by ``num_workers`` processes (``--cache none``)."""

    def __init__(self, samples, size, batch_size, device, num_workers, shuffle=False, generator=None):
        self.dataset = SceneDataset(samples, size)
        super().__init__(self.dataset.targets, batch_size, device, shuffle, generator)
        self.num_workers = num_workers

    def iterate(self, start=0):
        # The loader's own generator keeps it from drawing on the global RNG that augmentation uses.
        loader = DataLoader(self.dataset, batch_sampler=[i.tolist() for i in self.batch_indices(start)],
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator(), worker_init_fn=ignore_interrupts)
        for images, labels, indices in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device), indices.to(self.device)

    def images_at(self, indices):
        """uint8 images (B, 3, S, S) of dataset ``indices``, decoded here, on the device."""
        return torch.stack([self.dataset[i][0] for i in indices.tolist()]).to(self.device)
