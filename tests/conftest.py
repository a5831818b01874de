"""Shared test helpers: tests make their own small data in temporary folders."""
import os

import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import CLASSES, render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses whose runs are compared bit for bit sum with a fixed number of threads, whatever the machine
# or its load (OpenMP's default follows the cores, and a reduction's order follows the threads).
FIXED_THREADS = dict(os.environ, OMP_NUM_THREADS="2")


def make_image_tree(root, classes=4, per_class=12, size=32, ext="png"):
    """``root/<class>/<class>_<k>.<ext>`` with small synthetic scene images; returns ``root``."""
    for label, name in enumerate(CLASSES[:classes]):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(per_class):
            image = render(name, np.random.default_rng([label, k]), size)
            Image.fromarray(image).save(os.path.join(root, name, f"{name}_{k:02d}.{ext}"))
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory):
    """A small dataset: ``<data>/tiny/<class>/*.png`` (4 classes x 12 images, 32 px)."""
    data = tmp_path_factory.mktemp("data")
    make_image_tree(os.path.join(data, "tiny"))
    return str(data)
