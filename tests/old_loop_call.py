"""The training loop called as the tests written before the memory variants call it (``lib.train.train_one_epoch``
of commit 3d3b33e): the memory bank, MU's key encoder and the memory momentum as separate arguments, put together
here into the memory and the loss that ``lib.training.loop.train_one_epoch`` takes; the tests keep their lines."""
from lib.losses import METHODS
from lib.memories.key_encoder import KeyEncoderMemory
from lib.training.loop import train_one_epoch as epoch


def train_one_epoch(model, memory, key_encoder, batches, optimizer, args, memory_momentum, precision, triplets=None,
                    **options):
    if memory is not None:
        memory.momentum = memory_momentum  # MB's; MU replaces rows
        if key_encoder is not None:
            memory = KeyEncoderMemory(memory, key_encoder, args.key_momentum)
    loss_fn = METHODS[args.method].build(args)
    return epoch(model, memory, batches, optimizer, loss_fn, precision, draws=triplets, **options)
