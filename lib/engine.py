"""The training program shared by both entry points; they differ only by ``--memory`` (MB or MU)."""
import os
import sys
import time

import torch
from torch.utils.data import DataLoader

from datasets import SceneDataset, build_splits, eval_transform, make_synthetic, train_transform
from lib.args import get_args_parser
from lib.checkpoint import check_compatible, load_state, restore_training_state, save_checkpoint, training_state
from lib.errors import InputError, one_line
from lib.memory import KeyEncoder, Memory
from lib.run import REPO, RunLog, run_folder
from lib.schedules import memory_momentum, step_lr
from lib.train import train_one_epoch, validate
from lib.utils import epoch_seed, seed_everything, seed_worker
from models import EmbeddingNet, trunk_weights

# The method's own kNN reference selects the best checkpoint (SPEC.md sections 5, 6).
OWN_REFERENCE = {"mb": "bank", "mu": "extracted"}
SCALARS = {"train/loss": "loss", "train/loss_snca": "loss_snca", "train/loss_ce": "loss_ce", "train/lr": "lr",
           "train/memory_momentum": "memory_momentum", "val/knn_acc": "knn_acc",
           "val/knn_acc_bank": "knn_acc_bank", "val/knn_acc_extracted": "knn_acc_extracted"}


def main(memory):
    """Entry point: parse the flags of ``memory`` ('mb' or 'mu'), train, and turn bad input into one line."""
    args = get_args_parser(memory).parse_args()
    try:
        train(args)
    except InputError as error:
        sys.exit(f"error: {one_line(error)}")


def resolve_data(args):
    """Fill in the dataset defaults; generate the synthetic dataset when it is asked for. Returns its root."""
    if args.dataset is None:
        args.dataset = "synthetic" if args.data is None else "UCMerced_LandUse"
    if args.data is None:
        if args.dataset != "synthetic":
            raise InputError(f"--dataset {args.dataset} needs --data, the folder that holds it")
        args.data = os.path.join(REPO, "data")
    if args.imgEXT is None:
        args.imgEXT = "png" if args.dataset == "synthetic" else "tif"
    if not os.path.isdir(args.data) and args.dataset != "synthetic":
        raise InputError(f"--data {args.data}: no such folder")
    root = os.path.join(args.data, args.dataset)
    if args.dataset == "synthetic":
        make_synthetic(root)
    return root


def make_loaders(splits, args, device):
    """Train loader (augmented, shuffled, last partial batch kept) and eval loaders (val, train)."""
    if not splits["val"]:
        raise InputError("the validation split is empty: a class needs at least 4 images to give one")
    common = {"batch_size": args.batch_size, "num_workers": args.num_workers, "pin_memory": device.type == "cuda",
              "worker_init_fn": seed_worker}
    generator = torch.Generator()
    train = DataLoader(SceneDataset(splits["train"], train_transform(args.image_size)), shuffle=True,
                       drop_last=False, generator=generator, **common)
    val = DataLoader(SceneDataset(splits["val"], eval_transform(args.image_size)), **common)
    train_eval = DataLoader(SceneDataset(splits["train"], eval_transform(args.image_size)), **common)
    return train, val, train_eval, generator


def train(args):
    # ---------------- set-up: device, seeds, resumed state ----------------
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed_everything(args.seed)
    checkpoint = load_state(args.resume) if args.resume else None

    # ---------------- data: the reference split of the folder dataset ----------------
    root = resolve_data(args)
    splits = build_splits(root, ext=args.imgEXT, seed=args.split_seed)
    train_loader, val_loader, train_eval_loader, generator = make_loaders(splits, args, device)
    num_train, num_classes = len(splits["train"]), len(splits["classes"])
    if num_classes < 2:
        raise InputError(f"{root} has {num_classes} class: SNCA-CE needs at least 2")

    # ---------------- model, memory, key encoder, optimiser ----------------
    if checkpoint is not None:
        check_compatible(checkpoint, args, num_train, num_classes)
    weights = None if checkpoint else trunk_weights(args.model, args.pretrained, args.weights)
    model = EmbeddingNet(args.model, args.dim, num_classes, weights).to(device)
    memory = Memory(train_loader.dataset.targets, args.dim).to(device)
    key_encoder = KeyEncoder(model) if args.memory == "mu" else None
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay)
    start_epoch, best_acc = 0, -1.0
    if checkpoint is not None:
        start_epoch, best_acc = restore_training_state(checkpoint, model, memory, key_encoder, optimizer)

    # ---------------- run folder ----------------
    log = RunLog(run_folder(args), done_epochs=start_epoch)
    log.write_args(args, device_used=str(device), num_train=num_train, num_classes=num_classes,
                   torch_version=torch.__version__)
    log.write_splits(splits, root)
    print(f"run folder {log.folder}: {num_classes} classes, {num_train} / {len(splits['val'])} / "
          f"{len(splits['test'])} train / val / test images, {device}")

    # ---------------- epochs: train, validate, log, checkpoint ----------------
    for epoch in range(start_epoch, args.epochs):
        start = time.time()
        seed_everything(epoch_seed(args.seed, epoch))
        generator.manual_seed(epoch_seed(args.seed, epoch))
        lr = step_lr(epoch, args.lr, args.lr_step, args.lr_gamma)
        for group in optimizer.param_groups:
            group["lr"] = lr
        momentum = memory_momentum(epoch, args.memory_momentum) if args.memory == "mb" else 0.0
        losses = train_one_epoch(model, memory, key_encoder, train_loader, optimizer, device, args, momentum,
                                 desc=f"epoch {epoch + 1}/{args.epochs}")
        accuracy = validate(model, memory, val_loader, train_eval_loader, device, args.knn_k)
        knn_acc = accuracy[OWN_REFERENCE[args.memory]]
        is_best = knn_acc > best_acc
        best_acc = max(best_acc, knn_acc)
        metrics = {"epoch": epoch + 1, **losses, "lr": lr, "memory_momentum": momentum, "knn_acc": knn_acc,
                   "knn_acc_bank": accuracy["bank"], "knn_acc_extracted": accuracy["extracted"],
                   "best_knn_acc": best_acc, "time_s": time.time() - start}
        log.log_epoch(metrics, SCALARS)
        state = training_state(model, memory, key_encoder, optimizer, epoch + 1, best_acc, args, num_train,
                               num_classes)
        save_checkpoint(os.path.join(log.checkpoints, "last.pt"), state)
        if is_best:
            save_checkpoint(os.path.join(log.checkpoints, "best.pt"), state)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {losses['loss']:.4f} (snca {losses['loss_snca']:.4f}, "
              f"ce {losses['loss_ce']:.4f})  lr {lr:g}  val kNN@{args.knn_k} {100 * knn_acc:.2f}% "
              f"[bank {100 * accuracy['bank']:.2f}%, extracted {100 * accuracy['extracted']:.2f}%]  "
              f"{metrics['time_s']:.1f}s{'  *best' if is_best else ''}", flush=True)
    if start_epoch >= args.epochs:  # nothing left to train: report the current model
        accuracy = validate(model, memory, val_loader, train_eval_loader, device, args.knn_k)
        print(f"nothing to train after epoch {start_epoch}: val kNN@{args.knn_k} "
              f"{100 * accuracy[OWN_REFERENCE[args.memory]]:.2f}%")
    log.close()
    print(f"done: best val kNN@{args.knn_k} {100 * best_acc:.2f}%; run folder {log.folder}")
    return log.folder
