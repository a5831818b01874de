"""A trained run, for the tools that use it (``scripts/evaluate.py``, ``scripts/retrieve.py``): its network
from a checkpoint, its recorded split, and embeddings of decoded images on the device."""
import json
import os

import torch

from datasets import TensorBatches
from datasets.presets import dataset_root
from errors import InputError, load_state
from lib.training.loop import extract_embeddings
from models import EmbeddingNet


def checkpoint_path(target, which="best"):
    """``target`` is a checkpoint file or a run folder (its ``checkpoints/<which>.pt``)."""
    if os.path.isdir(target):
        return os.path.join(target, "checkpoints", f"{which}.pt")
    return target


def load_trained(target, device, which="best", flag="RUN_DIR"):
    """The network of a checkpoint in eval mode on ``device``, the run's recorded arguments (with its
    ``band_stats``, None for RGB images) and its folder."""
    path = checkpoint_path(target, which)
    state = load_state(path, flag=flag)
    args = dict(state["args"], band_stats=state.get("band_stats"))
    model = EmbeddingNet(args["model"], args["dim"], state["num_classes"],
                         in_channels=state["model"]["trunk.conv1.weight"].shape[1])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), args, os.path.dirname(os.path.dirname(os.path.abspath(path)))


def recorded_split(run_dir, split, data=None):
    """``[(path, label)]`` of a split as the run wrote it (``splits/<split>.txt``), the class names, and the
    dataset folder (the recorded ``--data`` unless ``data`` overrides it, for a dataset that moved)."""
    with open(os.path.join(run_dir, "args.json")) as f:
        args = json.load(f)
    root = dataset_root(data or args["data"], args["dataset"])
    folder = os.path.join(run_dir, "splits")
    try:
        with open(os.path.join(folder, "classes.txt")) as f:
            classes = f.read().splitlines()
        with open(os.path.join(folder, f"{split}.txt")) as f:
            rows = [line.rsplit(" ", 1) for line in f.read().splitlines()]
    except OSError as error:
        raise InputError(f"{run_dir} is not a complete run folder: {error}") from None
    samples = [(os.path.join(root, rel), int(label)) for rel, label in rows]
    missing = [p for p, _ in samples[:1] + samples[-1:] if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{missing[0]} (recorded in {folder}/{split}.txt) does not exist: give the dataset's "
                         "current parent folder with --data")
    return samples, classes, root


def embed(model, images, labels, device, precision, batch_size=512, pipeline=None):
    """Float32 unit embeddings (N, D) of uint8 images (N, 3, S, S) with the eval preprocessing, on ``device``
    (N-band images (N, C, S, S): ``pipeline``'s, ``datasets.augment.pipeline_of`` the run's ``band_stats``)."""
    batches = TensorBatches(images, labels, batch_size, device)
    batches.pipeline = pipeline
    embeddings, _ = extract_embeddings(model, batches, precision)                 # (N, D)
    return embeddings


def top_k(queries, database, k, chunk=4096):
    """Indices (Q, k) of the ``k`` most similar database rows (cosine of unit embeddings), best first."""
    k = min(k, len(database))
    return torch.cat([(q @ database.T).topk(k, dim=1).indices for q in queries.split(chunk)])  # (Q, k)
