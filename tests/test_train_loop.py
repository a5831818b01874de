"""The training loop's wiring of the triplet baseline: one forward pass over anchors, their positives and
their negatives, in that order, each an image of the dataset index the epoch's draw names."""
import torch
from old_loop_call import train_one_epoch

import lib.distributed.parallel
from datasets import TensorBatches
from lib.cli.args import get_args_parser
from lib.losses.triplet import sample_triplets
from lib.training.device import resolve_precision
from models import EmbeddingNet

CPU = torch.device("cpu")


class Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, images):
        self.inputs.append(images.clone())
        return self.model(images)


def test_triplet_step_forwards_anchors_positives_negatives(monkeypatch):
    # keep pixel values readable
    monkeypatch.setattr(lib.distributed.parallel, "train_augment", lambda images: images.float())
    n = 24
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()  # image i is all i
    labels = torch.arange(n) % 3
    args = get_args_parser("mb").parse_args(["--method", "triplet"])
    model = Recorder(EmbeddingNet("resnet18", 8, 3))
    batches = TensorBatches(images, labels, 5, CPU, shuffle=True, generator=torch.Generator().manual_seed(0))
    positives, negatives = sample_triplets(labels, torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    losses = train_one_epoch(model, None, None, batches, optimizer, args, 0.0, resolve_precision(CPU, "none"),
                             triplets=(positives, negatives))
    assert set(losses) == {"loss", "loss_triplet", "loss_ce"} and losses["loss_ce"] == 0
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).split(5)
    assert len(model.inputs) == len(order)
    for seen, anchors in zip(model.inputs, order):
        ids = seen[:, 0, 0, 0].long()                                         # the index each image shows
        assert torch.equal(ids, torch.cat([anchors, positives[anchors], negatives[anchors]]))
