"""The training program shared by both entry points; they differ only by ``--memory`` (MB or MU)."""
import os
import signal
import sys
import time

import torch

from datasets import DecodingBatches, TensorBatches, build_splits, decoded_images, make_synthetic
from datasets.check import check_dataset, summary
from datasets.presets import PRESETS, dataset_root, preset_mismatch
from lib.args import get_args_parser
from lib.checkpoint import (
    check_compatible,
    load_state,
    resolve_resume,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from lib.device import resolve_device, resolve_precision
from lib.errors import InputError, one_line
from lib.interrupt import StopRequest, TrainingInterrupted
from lib.memory import KeyEncoder, Memory
from lib.run import REPO, RunLog, run_folder
from lib.schedules import memory_momentum, step_lr
from lib.train import NonFiniteError, train_one_epoch, validate
from lib.triplet_loss import sample_triplets
from lib.utils import epoch_seed, seed_everything, set_rng_state
from models import EmbeddingNet, trunk_weights

CACHE_DEVICE_SHARE = 0.5  # --cache auto keeps decoded images on the GPU when they fill under this share of it
# TensorBoard tag -> metric; a metric a method does not have (no memory: no bank kNN) is not logged.
SCALARS = {**{f"train/{k}": k for k in ("loss", "loss_snca", "loss_dcnn", "loss_triplet", "loss_ce", "lr",
                                         "memory_momentum")},
           **{f"val/{k}": k for k in ("knn_acc", "knn_acc_bank", "knn_acc_extracted")}}


def own_reference(args):
    """The kNN reference that selects the best checkpoint: the bank for MB (SPEC.md section 5), else
    the re-extracted training embeddings (MU, section 6; the baselines have no memory)."""
    return "bank" if args.memory == "mb" and args.method in ("snca-ce", "snca") else "extracted"


def uses_memory(args):
    return args.method in ("snca-ce", "snca")


def main(memory):
    """Entry point: parse the flags of ``memory`` ('mb' or 'mu'), train, and turn bad input into one line."""
    args = get_args_parser(memory).parse_args()
    try:
        train(args)
    except (InputError, NonFiniteError) as error:
        sys.exit(f"error: {one_line(error)}")


def stopped(log, stop, where):
    """Leave after a stop request, saying how to continue; exit status 128 + the signal number."""
    log.close()
    print(f"stopped by {signal.Signals(stop.signal).name} at {where}; {log.checkpoints}/last.pt holds it. "
          f"Continue with the same command and --resume {log.folder}", file=sys.stderr, flush=True)
    raise SystemExit(128 + stop.signal)


def resolve_data(args):
    """Fill in the dataset defaults; generate the synthetic dataset when it is asked for. Returns its root."""
    if args.dataset is None:
        args.dataset = "synthetic" if args.data is None else "UCMerced_LandUse"
    if args.data is None:
        if args.dataset != "synthetic":
            raise InputError(f"--dataset {args.dataset} needs --data, the folder that holds it")
        args.data = os.path.join(REPO, "data")
    if args.imgEXT is None:
        args.imgEXT = PRESETS[args.dataset].ext if args.dataset in PRESETS else "tif"
    if not os.path.isdir(args.data) and args.dataset != "synthetic":
        raise InputError(f"--data {args.data}: no such folder")
    if args.dataset == "synthetic":
        make_synthetic(os.path.join(args.data, args.dataset))
    return dataset_root(args.data, args.dataset)


def checked_splits(root, args):
    """The reference split, after the start-up check of every file (``--check-images``): problems are
    reported, unreadable files stop the run by name unless ``--skip-bad-images`` leaves them out."""
    report = {"bad": [], "problems": []}
    if args.check_images != "none":
        report = check_dataset(root, args.imgEXT, args.split_seed, args.check_images == "full", args.num_workers,
                               args.skip_bad_images)
        for line in summary(report, root):
            print(f"warning: {line}", file=sys.stderr)
    if report["bad"] and not args.skip_bad_images:
        named = "; ".join(f"{os.path.relpath(p, root)} ({kind}{': ' + detail if detail else ''})"
                          for kind, p, detail in report["problems"] if p in report["bad"])
        raise InputError(f"{len(report['bad'])} unreadable image(s) in {root}: {named}. Leave them out with "
                         "--skip-bad-images, or see everything with scripts/check_dataset.py")
    splits = build_splits(root, ext=args.imgEXT, seed=args.split_seed, exclude=report["bad"])
    num_images = sum(len(splits[s]) for s in ("train", "val", "test")) + len(report["bad"])
    if mismatch := preset_mismatch(args.dataset, len(splits["classes"]), num_images):
        print(f"warning: {mismatch}", file=sys.stderr)
    return splits, report


def cache_place(args, device, num_images):
    """Where decoded images live: ``--cache``, with auto = the device when they fill under half its free memory."""
    if args.cache != "auto":
        return args.cache
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if num_images * 3 * args.image_size**2 < free * CACHE_DEVICE_SHARE:
            return "device"
    return "memory"


def make_batches(splits, args, device):
    """Train batches (shuffled per epoch by the returned generator, last partial batch kept) and eval
    batches of the validation and training splits, all as uint8 images on ``device``."""
    if not splits["val"]:
        raise InputError("the validation split is empty: with the reference ratios, classes of 1 to 3 or of 6 "
                         "images give no validation image")
    generator = torch.Generator()
    place = cache_place(args, device, len(splits["train"]) + len(splits["val"]))
    if place == "none":
        def batches(split, batch_size, **shuffle):
            return DecodingBatches(splits[split], args.image_size, batch_size, device, args.num_workers, **shuffle)
    else:
        store = device if place == "device" else torch.device("cpu")
        images = {split: decoded_images(splits[split], args.image_size, args.num_workers, args.cache_dir).to(store)
                  for split in ("train", "val")}

        def batches(split, batch_size, **shuffle):
            return TensorBatches(images[split], [label for _, label in splits[split]], batch_size, device, **shuffle)
    train = batches("train", args.batch_size, shuffle=True, generator=generator)
    return train, batches("val", args.eval_batch_size), batches("train", args.eval_batch_size), generator


def train(args):
    # ---------------- set-up: device, seeds, resumed state ----------------
    device = resolve_device(args.device)
    precision = resolve_precision(device, args.amp)
    seed_everything(args.seed)
    if args.resume:
        args.resume = resolve_resume(args.resume, args.out, args.run_name)
    checkpoint = load_state(args.resume) if args.resume else None

    # ---------------- data: the reference split of the folder dataset, decoded once ----------------
    root = resolve_data(args)
    splits, report = checked_splits(root, args)
    num_train, num_classes = len(splits["train"]), len(splits["classes"])
    if num_classes < 2:
        raise InputError(f"{root} has {num_classes} class: SNCA-CE needs at least 2")
    if checkpoint is not None:
        check_compatible(checkpoint, args, num_train, num_classes)
    weights = None if checkpoint else trunk_weights(args.model, args.pretrained, args.weights)  # before decoding
    train_batches, val_batches, train_eval_batches, generator = make_batches(splits, args, device)

    # ---------------- model, memory, key encoder, optimiser ----------------
    model = EmbeddingNet(args.model, args.dim, num_classes, weights).to(device, memory_format=precision.memory_format)
    memory = Memory(train_batches.labels, args.dim, getattr(torch, args.memory_dtype)).to(device) \
        if uses_memory(args) else None
    key_encoder = KeyEncoder(model) if args.memory == "mu" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay)
    start_epoch, best_acc, position = 0, -1.0, None
    if checkpoint is not None:
        start_epoch, best_acc, position = restore_training_state(checkpoint, model, memory, key_encoder, optimizer,
                                                                  precision.scaler, device)

    # ---------------- run folder ----------------
    log = RunLog(run_folder(args), done_epochs=start_epoch)
    log.write_args(args, device_used=str(device), num_train=num_train, num_classes=num_classes,
                   torch_version=torch.__version__)
    log.write_splits(splits, root)
    log.write_json("dataset_check.json", report)
    print(f"run folder {log.folder}: {num_classes} classes, {num_train} / {len(splits['val'])} / "
          f"{len(splits['test'])} train / val / test images, {device}")

    # ---------------- epochs: train, validate, log, checkpoint ----------------
    last = os.path.join(log.checkpoints, "last.pt")
    with StopRequest() as stop:
        for epoch in range(start_epoch, args.epochs):
            start = time.time()
            seed_everything(epoch_seed(args.seed, epoch))
            generator.manual_seed(epoch_seed(args.seed, epoch))
            if position is not None:  # resumed inside this epoch: its random draws continue where they were
                set_rng_state(checkpoint["rng"])
            lr = step_lr(epoch, args.lr, args.lr_step, args.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            momentum = memory_momentum(epoch, args.memory_momentum) if args.memory == "mb" and memory else 0.0
            triplets = sample_triplets(train_batches.labels, torch.Generator().manual_seed(
                epoch_seed(args.seed, epoch))) if args.method == "triplet" else None
            try:
                losses = train_one_epoch(model, memory, key_encoder, train_batches, optimizer, args, momentum,
                                         precision, desc=f"epoch {epoch + 1}/{args.epochs}", position=position,
                                         stop=stop, triplets=triplets)
            except TrainingInterrupted as where:
                save_checkpoint(last, training_state(model, memory, key_encoder, optimizer, precision.scaler, epoch,
                                                     best_acc, args, num_train, num_classes,
                                                     (where.step, where.totals, where.seen)))
                stopped(log, stop, f"epoch {epoch + 1}, step {where.step} of {len(train_batches)}")
            position = None
            accuracy = validate(model, memory, val_batches, train_eval_batches, args.knn_k, precision)
            knn_acc = accuracy[own_reference(args)]
            is_best = knn_acc > best_acc
            best_acc = max(best_acc, knn_acc)
            metrics = {"epoch": epoch + 1, **losses, "lr": lr, "memory_momentum": momentum, "knn_acc": knn_acc,
                       "knn_acc_bank": accuracy["bank"], "knn_acc_extracted": accuracy["extracted"],
                       "best_knn_acc": best_acc, "time_s": time.time() - start}
            log.log_epoch(metrics, SCALARS)
            state = training_state(model, memory, key_encoder, optimizer, precision.scaler, epoch + 1, best_acc,
                                   args, num_train, num_classes)
            save_checkpoint(last, state)
            if is_best:
                save_checkpoint(os.path.join(log.checkpoints, "best.pt"), state)
            terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in losses.items() if k != "loss")
            references = ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items() if v is not None)
            print(f"epoch {epoch + 1}/{args.epochs}  loss {losses['loss']:.4f} ({terms})  lr {lr:g}  "
                  f"val kNN@{args.knn_k} {100 * knn_acc:.2f}% [{references}]  "
                  f"{metrics['time_s']:.1f}s{'  *best' if is_best else ''}", flush=True)
            if stop and epoch + 1 < args.epochs:
                stopped(log, stop, f"the end of epoch {epoch + 1}")
    if start_epoch >= args.epochs:  # nothing left to train: report the current model
        accuracy = validate(model, memory, val_batches, train_eval_batches, args.knn_k, precision)
        print(f"nothing to train after epoch {start_epoch}: val kNN@{args.knn_k} "
              f"{100 * accuracy[own_reference(args)]:.2f}%")
    log.close()
    print(f"done: best val kNN@{args.knn_k} {100 * best_acc:.2f}%; run folder {log.folder}")
    return log.folder
