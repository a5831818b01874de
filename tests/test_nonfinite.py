"""No silent NaN: a non-finite loss term or embedding stops the step before the optimizer step and
before any memory update, naming the epoch, the step and the term."""
import copy

import pytest
import torch
from old_loop_call import train_one_epoch

from datasets import TensorBatches
from lib.cli.args import get_args_parser
from lib.memories.bank import MemoryBank
from lib.memories.key_encoder import KeyEncoder
from lib.training.device import resolve_precision
from lib.training.loop import NonFiniteError
from models import EmbeddingNet

CPU = torch.device("cpu")


class NaNFrom(torch.nn.Module):
    """The network, whose ``term`` output turns NaN at forward call ``call``; keeps the weights and the memory
    as they were then."""

    def __init__(self, model, call, term, memory):
        super().__init__()
        self.model, self.call, self.term, self.calls, self.memory = model, call, term, 0, memory

    def forward(self, images):
        embeddings, logits = self.model(images)
        self.calls += 1
        if self.calls == self.call:
            self.weights_then = copy.deepcopy(self.model.state_dict())
            self.memory_then = self.memory.memory.clone()
            if self.term == "embeddings":
                embeddings = embeddings * float("nan")
            else:
                logits = logits * float("inf")
        return embeddings, logits


@pytest.mark.slow
@pytest.mark.parametrize("method, term, named", [("mb", "embeddings", "loss_snca, embeddings"),
                                                 ("mu", "logits", "loss_ce")])
def test_nan_stops_the_step_before_weights_and_memory_change(method, term, named):
    args = get_args_parser(method).parse_args([])
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(20) % 4
    memory = MemoryBank(labels, 16)
    model = NaNFrom(EmbeddingNet("resnet18", 16, 4), call=3, term=term, memory=memory)
    key_encoder = KeyEncoder(model.model) if method == "mu" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = TensorBatches(images, labels, 5, CPU, shuffle=True, generator=torch.Generator().manual_seed(1))
    initial = memory.memory.clone()
    with pytest.raises(NonFiniteError, match=rf"non-finite {named} at epoch 3/5, step 3: stopped before"):
        train_one_epoch(model, memory, key_encoder, batches, optimizer, args, 0.5, resolve_precision(CPU, "none"),
                        desc="epoch 3/5")
    assert not torch.equal(model.memory_then, initial)  # steps 1 and 2 wrote their rows: the snapshot can differ
    assert torch.isfinite(memory.memory).all() and torch.equal(memory.memory, model.memory_then)  # as after step 2
    assert all(torch.equal(v, model.weights_then[k]) for k, v in model.model.state_dict().items())
