"""``InputError`` and ``one_line`` under their earlier address; they live in the top-level ``errors`` module, which
``datasets/`` and ``models/`` import without depending on ``lib/``."""
from errors import InputError, one_line

__all__ = ["InputError", "one_line"]
