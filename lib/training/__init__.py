"""Training: the loop, the program both entry points run, data, device, checkpoints, resuming, run folders."""
