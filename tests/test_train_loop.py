"""The training loop's wiring of the triplet baseline: one forward pass over anchors, their positives and
their negatives, in that order, each an image of the dataset index the epoch's draw names; the optimiser's
all-tensors-at-once (foreach) step, which training uses on every device, against the per-tensor step."""
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


def test_the_foreach_step_gives_the_per_tensor_steps_numbers():
    torch.manual_seed(0)
    net = EmbeddingNet("resnet18", 8, 3)
    grads = [[torch.randn_like(p) for p in net.parameters()] for _ in range(3)]
    params = {}
    for foreach in (False, True):
        model = EmbeddingNet("resnet18", 8, 3)
        model.load_state_dict(net.state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                    foreach=foreach)
        for step in grads:
            for p, g in zip(model.parameters(), step):
                p.grad = g.clone()
            optimizer.step()
        params[foreach] = [p.detach() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params[False], params[True]))
    assert not all(torch.equal(a, b) for a, b in zip(params[True], net.parameters()))  # the steps moved them
