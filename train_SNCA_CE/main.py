"""Train SNCA-CE (MB) (Kang et al., IEEE TGRS 2020): `python train_SNCA_CE/main.py --help`.

L = lambda * L_SNCA + L_CE, lambda = 1 (docs/method.md sections 1, 2 and 4). L_CE classifies the embedding on
learned class prototypes; L_SNCA = -(1/B) sum_i log sum_{j != i, y_j = y_i} p_ij takes a batch's unit embeddings
f_i against the memory m_1..m_N as it is before the step: p_ij = exp(f_i.m_j / T) / sum_{k != i} exp(f_i.m_k / T),
T = 0.05.

MB, the memory bank (section 5): after each step the batch's rows average the network's own embeddings,
m_i <- normalise(a * m_i + (1 - a) * f_i), a = 0.5, then 0.8 from epoch 80 and 0.9 from 120.
Also here: the baselines (--method) and memories beyond the paper (--memory, listed by --help).
"""
import gc
import os
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.cli.args import parse_args  # noqa: E402

if __name__ == "__main__":
    args = parse_args("mb")  # --help and bad flags answer here, before torch is imported
    if args.check_args:  # checked (lib.cli.args.parse_args), nothing written: the paper scripts' check of a command
        sys.exit(0)
    from lib.training.program import main

    main(args)
    gc.freeze()  # all is written and closed: the exit need not sweep torch's ~3e5 objects for cycles (~1 s)
