"""The training program shared by both entry points; each passes its memory (MB or MU, ``lib.memories.MEMORIES``).

One process, or one rank of a ``torchrun`` launch (``lib.distributed.ranks``): every rank builds the same model,
memory and batch order from the seed, trains on its part of each global batch and applies the whole batch's
memory update; rank 0 alone writes the run folder and the checkpoints.
"""
import os
import sys
import time

import torch

from datasets.augment import RGB
from errors import InputError, one_line
from lib.cli.args import divergence_hint
from lib.distributed.parallel import data_parallel, sync_batch_norm, sync_buffers
from lib.distributed.ranks import (
    any_rank,
    assert_same_on_all_ranks,
    barrier,
    in_turn,
    memory_checksum,
    on_main,
    run_on_ranks,
)
from lib.losses import METHODS, TERMS
from lib.memories import MEMORIES
from lib.training.checkpoint import (
    check_compatible,
    link_checkpoint,
    load_state,
    resolve_resume,
    restore_rng,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from lib.training.data import checked_splits, make_batches, resolve_data
from lib.training.device import amp_name, check_compiler, compile_network, keep_freed_memory, resolve_precision
from lib.training.interrupt import StopRequest, TrainingInterrupted, stopped
from lib.training.loop import NonFiniteError, train_one_epoch, validate
from lib.training.run import open_run_folder
from lib.training.schedules import step_lr
from lib.training.utils import epoch_seed, process_age, seed_everything
from models import EmbeddingNet, trunk_weights

# TensorBoard tag -> metric; a metric a method does not have (no memory: no bank kNN) is not logged.
SCALARS = {**{f"train/{k}": k for k in ("loss", *(f"loss_{term}" for term in TERMS), "loss_ce",
                                         "lr", "memory_momentum")},
           **{f"val/{k}": k for k in ("knn_acc", "knn_acc_bank", "knn_acc_extracted")}}


def main(args):
    """Entry point: train with the flags of ``lib.cli.args.parse_args``, and turn bad input into one line."""
    try:
        train(args)
    except (InputError, NonFiniteError) as error:  # under torchrun every rank stops alike: rank 0 says why
        hint = divergence_hint(args) if isinstance(error, NonFiniteError) else ""
        sys.exit(f"error: {one_line(error)}{hint}" if os.environ.get("RANK", "0") == "0" else 1)
    except ValueError as error:  # a torchrun rank's part of one image (one process folds it: datasets/batches.py)
        if "more than 1 value per channel" not in str(error):
            raise
        sys.exit("error: a rank's part of a batch held one image, which BatchNorm cannot train on at this "
                 "--image-size: add --sync-bn, or choose another -b or number of ranks")


def check_world(args, dist):
    """Refuse, before anything starts, what a torchrun launch cannot train as one process would."""
    if dist.world_size == 1:
        return
    if args.batch_size < dist.world_size:
        raise InputError(f"-b {args.batch_size} is the global batch: it needs at least one image for each of the "
                         f"{dist.world_size} ranks")
    if METHODS[args.method].pairwise:
        raise InputError(f"--method {args.method} compares the images of a batch pairwise, which under torchrun "
                         "would span ranks: train it in one process")


def train(args):
    """The whole run in this process: alone, or as one rank of a torchrun launch."""
    return run_on_ranks(train_ranks, args)


def train_ranks(args, dist):
    # ---------------- set-up: device, seeds (the same on every rank), resumed state ----------------
    device = dist.device
    args.amp = amp_name(device, args.amp)  # recorded as trained: a resume on another device keeps the precision
    precision = resolve_precision(device, args.amp)
    seed_everything(args.seed)
    check_world(args, dist)
    if args.compile:
        check_compiler(device)
    if device.type == "cpu" and args.cpu_allocator == "keep":
        keep_freed_memory()
    if args.resume:
        args.resume = on_main(dist, resolve_resume, args.resume, args.out, args.run_name)
    checkpoint = load_state(args.resume) if args.resume else None  # every rank reads it

    # ---------------- data: the reference split of the folder dataset, decoded once ----------------
    root = in_turn(dist, resolve_data, args)
    splits, report = checked_splits(root, args, dist)
    # FC2 and the memory's labels span the training classes: under --split unseen the seen ones only.
    num_train, num_classes = len(splits["train"]), splits.get("num_seen", len(splits["classes"]))
    if num_classes < 2:
        raise InputError(f"{root} has {num_classes} class: SNCA-CE needs at least 2")
    if checkpoint is not None:
        check_compatible(checkpoint, args, num_train, num_classes)
    # The trunk weights before decoding (a missing download fails early); rank 0 fetches them first.
    weights = None if checkpoint else in_turn(dist, trunk_weights, args.model, args.pretrained, args.weights)
    train_batches, val_batches, train_eval_batches, generator = make_batches(
        splits, args, dist, report, checkpoint.get("band_stats") if checkpoint else None)
    pipeline = train_batches.pipeline or RGB  # N-band images (--bands): their own pipeline and first layer

    # ---------------- model, memory (MU: with its key encoder), optimiser; DDP around the network ----------------
    net = EmbeddingNet(args.model, args.dim, num_classes, weights, pipeline.channels, pipeline.rgb,
                       n_band=pipeline is not RGB).to(
        device, memory_format=precision.memory_format)
    method = METHODS[args.method]
    loss_fn = method.build(args)  # the method's loss with the run's numbers (lambda, T, margin, ...)
    memory = MEMORIES[args.memory].load().build(args, train_batches.labels, net, dist).to(device) \
        if method.uses_memory else None
    if args.sync_bn:
        net = sync_batch_norm(net, dist)
    if not loss_fn.with_ce:  # FC2 gets no gradient without L_CE: frozen, DDP does not wait for one
        net.fc2.requires_grad_(False)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay, foreach=True)  # CPU too: fewer calls, same numbers
    start_epoch, best_acc, position = 0, -1.0, None
    if checkpoint is not None:
        start_epoch, best_acc, position = restore_training_state(checkpoint, net, memory, optimizer, precision.scaler,
                                                                  device)
    model = data_parallel(net, dist)  # the net itself in one process
    if args.compile:
        model = compile_network(model, memory)

    # ---------------- run folder (rank 0 writes) ----------------
    folder, log = open_run_folder(args, dist, start_epoch, splits, report, root, checkpoint, device_used=str(device),
                                  world_size=dist.world_size, num_train=num_train, num_classes=num_classes,
                                  torch_version=torch.__version__, augmentation=", ".join(pipeline.ops))
    if dist.is_main:
        if pipeline.stats:
            log.write_json("band_stats.json", pipeline.stats)
        print(f"run folder {folder}: {num_classes} classes, {num_train} / {len(splits['val'])} / "
              f"{len(splits['test'])} train / val / test images, {device}"
              + (f", {dist.world_size} ranks" if dist.world_size > 1 else "")
              + f"; {pipeline.channels} bands; augmentation: {', '.join(pipeline.ops)}")

    def state(epoch, position=None):
        return {**training_state(net, memory, optimizer, precision.scaler, epoch, best_acc, args, num_train,
                                 num_classes, position, dist.world_size, device),
                "band_stats": pipeline.stats}

    # ---------------- epochs: train, validate, log, checkpoint ----------------
    last = os.path.join(folder, "checkpoints", "last.pt")
    startup_s = process_age()  # the command to here: imports, file check, decoding, model; recorded once
    if dist.is_main and startup_s is not None:
        print(f"start-up {startup_s:.1f}s (imports, file check, decoding, model) before the first training step")
    with StopRequest(dist) as stop:
        for epoch in range(start_epoch, args.epochs):
            start = time.time()
            seed_everything(epoch_seed(args.seed, epoch))
            generator.manual_seed(epoch_seed(args.seed, epoch))
            if position is not None:  # resumed inside this epoch: its random draws continue where they were
                restore_rng(checkpoint, device)
            lr = step_lr(epoch, args.lr, args.lr_step, args.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if memory is not None:
                memory.set_epoch(epoch)  # MB's momentum schedule
            draws = loss_fn.draw(train_batches.labels, torch.Generator().manual_seed(epoch_seed(args.seed, epoch))) \
                if loss_fn.draw is not None else None  # the triplets' positives and negatives
            try:
                losses = train_one_epoch(model, memory, train_batches, optimizer, loss_fn, precision, draws,
                                         desc=f"epoch {epoch + 1}/{args.epochs}", position=position, stop=stop,
                                         dist=dist)
            except TrainingInterrupted as where:
                if dist.is_main:
                    save_checkpoint(last, state(epoch, (where.step, where.totals, where.seen)))
                barrier(dist)
                stopped(log, stop, f"epoch {epoch + 1}, step {where.step} of {len(train_batches)}", dist)
            position = None
            sync_buffers(net, dist)  # every rank evaluates, and rank 0 saves, rank 0's BatchNorm statistics
            if memory is not None and dist.world_size > 1:
                assert_same_on_all_ranks(torch.cat([memory_checksum(t) for t in memory.replicated()]), dist,
                                         "the memory")
            # The re-extracted reference: the method's own (MU, baselines), else a diagnostic every N epochs (MB).
            every, own = args.knn_extracted_every, method.reference(memory)
            extracted = own == "extracted" or (every > 0 and (epoch + 1) % every == 0)
            accuracy = validate(net, memory, val_batches, train_eval_batches, args.knn_k, precision, dist, extracted)
            knn_acc = accuracy[own]
            is_best = knn_acc > best_acc
            best_acc = max(best_acc, knn_acc)
            if dist.is_main:
                momentum = memory.momentum if memory is not None else None  # the variant's own: MB's alone has one
                metrics = {"epoch": epoch + 1, **losses, "lr": lr, "memory_momentum": momentum, "knn_acc": knn_acc,
                           "knn_acc_bank": accuracy["bank"], "knn_acc_extracted": accuracy["extracted"],
                           "best_knn_acc": best_acc, "time_s": time.time() - start,
                           **({"startup_s": startup_s} if epoch == start_epoch else {})}
                log.log_epoch(metrics, SCALARS)
                save_checkpoint(last, state(epoch + 1))
                if is_best:
                    link_checkpoint(last, os.path.join(log.checkpoints, "best.pt"))
                terms = ", ".join(f"{k[5:]} {v:.4f}" for k, v in losses.items() if k != "loss")
                references = ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items() if v is not None)
                print(f"epoch {epoch + 1}/{args.epochs}  loss {losses['loss']:.4f} ({terms})  lr {lr:g}  "
                      f"val kNN@{args.knn_k} {100 * knn_acc:.2f}% [{references}]  "
                      f"{metrics['time_s']:.1f}s{'  *best' if is_best else ''}", flush=True)
            barrier(dist)
            if any_rank(stop, dist) and epoch + 1 < args.epochs:
                stopped(log, stop, f"the end of epoch {epoch + 1}", dist)
    if start_epoch >= args.epochs:  # nothing left to train: report the current model
        accuracy = validate(net, memory, val_batches, train_eval_batches, args.knn_k, precision, dist)
        if dist.is_main:
            print(f"nothing to train after epoch {start_epoch}: val kNN@{args.knn_k} "
                  f"{100 * accuracy[method.reference(memory)]:.2f}%")
    if dist.is_main:
        log.close()
        print(f"done: best val kNN@{args.knn_k} {100 * best_acc:.2f}%; run folder {folder}" if best_acc >= 0 else
              f"done: no epoch trained (--epochs {args.epochs}); run folder {folder}")
    return folder
