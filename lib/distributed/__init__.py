"""torchrun: process groups and collectives (``ranks``), and the network and batch across ranks (``parallel``)."""
