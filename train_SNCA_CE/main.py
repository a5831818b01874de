"""Train SNCA-CE (MB) (Kang et al., IEEE TGRS 2020): `python train_SNCA_CE/main.py --help`.

A ResNet maps each image to a unit embedding; the loss is L = lambda * L_SNCA + L_CE. L_SNCA is the negative
log-probability that an image's soft neighbours in a memory of one embedding per training image share its class;
L_CE classifies the embedding on learned class prototypes (docs/method.md sections 1 and 4). The memory is a bank
(MB, section 5): after each step the batch's rows become a momentum average of themselves and the network's own
embeddings of the batch. Also here: the baselines (--method) and, beyond the paper, a cross-batch memory (--memory xbm).
"""
import os
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.args import parse_args  # noqa: E402

if __name__ == "__main__":
    args = parse_args("mb")  # --help and bad flags answer here, before torch is imported
    from lib.program import main

    main(args)
