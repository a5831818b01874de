"""Schedules as pure functions of the epoch (0-based), applied and logged by the training loop."""

MEMORY_MOMENTUM_MILESTONES = ((80, 0.8), (120, 0.9))  # docs/method.md section 5


def memory_momentum(epoch, initial=0.5, milestones=MEMORY_MOMENTUM_MILESTONES):
    """MB memory momentum: 0.5, then 0.8 from epoch 80 and 0.9 from epoch 120, as the reference."""
    value = initial
    for start, momentum in milestones:
        if epoch >= start:
            value = momentum
    return value


def step_lr(epoch, base_lr, step=30, gamma=0.5):
    """The learning rate of ``torch.optim.lr_scheduler.StepLR(step, gamma)`` at ``epoch``."""
    return base_lr * gamma ** (epoch // step)
