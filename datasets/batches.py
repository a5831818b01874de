"""Batches of decoded uint8 images, labels and dataset indices, from memory or decoded per pass.

Both sources yield ``(images uint8 (B, 3, S, S), labels (B,), indices (B,))`` on the training device,
in the same order for the same generator state, so ``--cache none`` trains exactly as a cached run;
augmentation and normalisation then run on the whole batch there (``datasets.augment``). N-band images
(``--bands``) come as (B, C, S, S) at the files' dtype, and the batches carry their ``pipeline``
(``datasets.augment.BandPipeline``); None is the reference RGB pipeline.
"""
import math
import signal
from functools import partial

import torch
from torch.utils.data import DataLoader, default_collate

from datasets.folder import SceneDataset


def collate(samples, size, channels=3, dtype=torch.uint8):
    """``default_collate``, which also takes an empty list: the empty part of a batch smaller than the world."""
    if not samples:
        nothing = torch.empty(0, dtype=torch.long)
        return torch.empty(0, channels, size, size, dtype=dtype), nothing, nothing
    return default_collate(samples)


def gather(images, indices):
    """``images[indices]``; uint16 N-band images through their int16 view (the same bits), since indexing
    kernels for uint16 are not built on every device."""
    if images.dtype == torch.uint16:
        return images.view(torch.int16)[indices].view(torch.uint16)
    return images[indices]


def ignore_interrupts(worker_id):
    """Workers leave Ctrl-C to the main process, which finishes its step and saves (``lib.training.interrupt``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Batches:
    """The batch order: a new permutation per pass drawn from ``generator`` when shuffling (the training
    loop reseeds it every epoch), the dataset order otherwise; the last partial batch is kept.

    Under torchrun every rank draws the same global batches and yields its ``rank``-th part of each
    (``torch.tensor_split`` over ``world_size``, as ``lib.distributed.ranks.shard_batch``): every image once per
    pass, by one rank. A batch with fewer images than ranks leaves some ranks an empty part, yielded as such.
    """

    pipeline = None  # how the images are augmented and normalised: None, the reference RGB functions
    # Training batches (``lib.training.data.make_batches``): a last batch of one image joins the batch before it, since
    # BatchNorm cannot train on one value per channel (at --image-size 32 layer4 is 1 x 1). A global rule, the
    # same on every rank and for any number of ranks, so torchrun parts and mid-epoch resumes stay aligned.
    fold_single = False

    def __init__(self, labels, batch_size, device, shuffle=False, generator=None, rank=0, world_size=1):
        self.labels = torch.as_tensor(labels, dtype=torch.long).cpu()            # (N,)
        self.batch_size, self.device, self.shuffle, self.generator = batch_size, device, shuffle, generator
        self.rank, self.world_size = rank, world_size

    def folds(self):
        """Whether the last batch, of a single image, joins the one before it (``fold_single``)."""
        n = len(self.labels)
        return self.fold_single and n > self.batch_size and n % self.batch_size == 1

    def __len__(self):
        return math.ceil(len(self.labels) / self.batch_size) - self.folds()

    def batch_indices(self, start=0):
        """The pass's (global) batches of dataset indices, from batch ``start`` on (a run resumed mid-epoch)."""
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches = list(order.split(self.batch_size))
        if self.folds():
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches[start:]

    def shard_indices(self, start=0):
        """This rank's part of each of the pass's batches (all of it in one process)."""
        if self.world_size == 1:
            return self.batch_indices(start)
        return [indices.tensor_split(self.world_size)[self.rank] for indices in self.batch_indices(start)]

    def global_size(self, step):
        """The number of images in batch ``step``, over all ranks."""
        left = len(self.labels) - step * self.batch_size
        return left if self.folds() and step == len(self) - 1 else min(self.batch_size, left)

    def __iter__(self):
        return self.iterate()

    def with_companions(self, start=0, companions=None):
        """``iterate(start)``, each batch's images followed by those of its images' ``companions`` (a sequence of
        (N,) dataset indices, e.g. every image's drawn positive and negative): (B * (1 + K), C, S, S)."""
        for images, labels, indices in self.iterate(start):
            if companions is not None:
                rows = indices.cpu()
                images = torch.cat([images, *(self.images_at(drawn[rows]) for drawn in companions)])
            yield images, labels, indices


class TensorBatches(Batches):
    """Batches gathered from decoded images held in CPU memory or on the device."""

    def __init__(self, images, labels, batch_size, device, shuffle=False, generator=None, rank=0, world_size=1):
        super().__init__(labels, batch_size, device, shuffle, generator, rank, world_size)
        self.images = images                                                     # (N, 3, S, S) uint8

    def iterate(self, start=0):
        pin = self.device.type == "cuda" and self.images.device.type == "cpu"
        for indices in self.shard_indices(start):                                # (B,)
            images = gather(self.images, indices.to(self.images.device))        # (B, 3, S, S)
            if pin:
                images = images.pin_memory()
            yield (images.to(self.device, non_blocking=True), self.labels[indices].to(self.device),
                   indices.to(self.device))

    def images_at(self, indices):
        """uint8 images (B, 3, S, S) of dataset ``indices`` (CPU) on the device: the triplet loss's draws."""
        return gather(self.images, indices.to(self.images.device)).to(self.device, non_blocking=True)


class DecodingBatches(Batches):
    """The same batches, decoded from the files in every pass by ``num_workers`` processes (``--cache none``)."""

    def __init__(self, samples, size, batch_size, device, num_workers, shuffle=False, generator=None, rank=0,
                 world_size=1, bands=None):
        self.dataset = SceneDataset(samples, size, bands)
        super().__init__(self.dataset.targets, batch_size, device, shuffle, generator, rank, world_size)
        self.num_workers, self.size = num_workers, size

    def iterate(self, start=0):
        # The loader's own generator keeps it from drawing on the global RNG that augmentation uses.
        loader = DataLoader(self.dataset, batch_sampler=[i.tolist() for i in self.shard_indices(start)],
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            collate_fn=self.collate_fn(), generator=torch.Generator(),
                            worker_init_fn=ignore_interrupts)
        for images, labels, indices in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device), indices.to(self.device)

    def collate_fn(self):
        bands = self.dataset.bands
        if bands is None:
            return partial(collate, size=self.size)
        return partial(collate, size=self.size, channels=bands.channels, dtype=bands.torch_dtype)

    def images_at(self, indices):
        """uint8 images (B, 3, S, S) of dataset ``indices``, decoded here, on the device."""
        return torch.stack([self.dataset[i][0] for i in indices.tolist()]).to(self.device)
