"""The training loop called as the tests written before the memory variants call it (``lib.train.train_one_epoch``
of commit 3d3b33e): the memory bank, MU's key encoder and the memory momentum as separate arguments, put together
here into the memory variant that ``lib.engine.train_one_epoch`` takes; the tests keep their lines."""
from lib.engine import train_one_epoch as epoch
from lib.momentum_update import MomentumUpdate


def train_one_epoch(model, memory, key_encoder, batches, optimizer, args, memory_momentum, precision, triplets=None,
                    **options):
    if memory is not None:
        memory.momentum = memory_momentum  # MB's; MU replaces rows
        if key_encoder is not None:
            memory = MomentumUpdate(memory, key_encoder, args.ema_momentum)
    return epoch(model, memory, batches, optimizer, args, precision, draws=triplets, **options)
