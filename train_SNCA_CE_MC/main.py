"""Train SNCA-CE (MU) (Kang et al., IEEE TGRS 2020): `python train_SNCA_CE_MC/main.py --help`.

A ResNet maps each image to a unit embedding; the loss is L = lambda * L_SNCA + L_CE. L_SNCA is the negative
log-probability that an image's soft neighbours in a memory of one embedding per training image share its class;
L_CE classifies the embedding on learned class prototypes (docs/method.md sections 1 and 4). The memory is written
by momentum update (MU, section 6): a key encoder, a copy of the network moved towards it after each step, replaces
the batch's rows by its embeddings. The folder keeps the name of the authors' code ("MC"); the method is MU.
"""
import os
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.args import parse_args  # noqa: E402

if __name__ == "__main__":
    args = parse_args("mu")  # --help and bad flags answer here, before torch is imported
    from lib.program import main

    main(args)
