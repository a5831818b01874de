"""Train SNCA-CE with a momentum-updated key encoder (MU): `python train_SNCA_CE_MC/main.py --help`."""
import os
import sys

# The repository root goes first on the path, so that this script runs from any working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.args import parse_args  # noqa: E402

if __name__ == "__main__":
    args = parse_args("mu")  # --help and bad flags answer here, before torch is imported
    from lib.engine import main

    main(args)
