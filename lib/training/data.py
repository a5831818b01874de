"""The data of a run: the dataset folder (generated for the synthetic default), the start-up check of its
files, the reference split, and the batches, decoded once and kept on the device or in memory (or decoded
every epoch), each rank's part of every batch under torchrun."""
import os
import sys

import torch

from datasets import DecodingBatches, TensorBatches, decoded_images, make_synthetic
from datasets.augment import BandPipeline
from datasets.bands import BandError, run_band_input, training_statistics
from datasets.check import BAD, check_dataset, summary
from datasets.folder import build_split
from datasets.presets import PRESETS, dataset_root, preset_mismatch
from errors import InputError
from lib.cli.flags import REFERENCE_DATASET
from lib.distributed.ranks import in_turn, on_main
from lib.training.run import REPO

CACHE_DEVICE_SHARE = 0.5  # --cache auto keeps decoded images on the GPU when they fill under this share of it


def resolve_data(args):
    """Fill in the dataset defaults; generate the synthetic dataset when it is asked for. Returns its root."""
    if args.dataset is None:
        args.dataset = "synthetic" if args.data is None else REFERENCE_DATASET
    if args.data is None:
        if args.dataset != "synthetic":
            raise InputError(f"--dataset {args.dataset} needs --data, the folder that holds it")
        args.data = os.path.join(REPO, "data")
    if args.imgEXT is None:
        args.imgEXT = PRESETS[args.dataset].ext if args.dataset in PRESETS else "tif"
    if args.dataset in PRESETS and args.bands is None:  # N-band presets read their bands (EuroSAT_MS: all)
        args.bands, args.rgb_bands = PRESETS[args.dataset].bands, args.rgb_bands or PRESETS[args.dataset].rgb_bands
    if not os.path.isdir(args.data) and args.dataset != "synthetic":
        raise InputError(f"--data {args.data}: no such folder")
    if args.dataset == "synthetic":
        make_synthetic(os.path.join(args.data, args.dataset))
    return dataset_root(args.data, args.dataset)


def file_check(root, args):
    """The start-up check of every file (``--check-images``): problems are reported, unreadable files stop the
    run by name unless ``--skip-bad-images`` leaves them out. Returns the report."""
    report = {"bad": [], "problems": []}
    if args.check_images != "none":
        report = check_dataset(root, args.imgEXT, args.split_seed, args.check_images == "full", args.num_workers,
                               args.skip_bad_images, args.bands, args.split, (args.seen_fraction, args.train_fraction))
        stopping = report["bad"] and not args.skip_bad_images  # the error below names those files, once
        for line in summary(report, root, skipping=args.skip_bad_images):
            if not (stopping and line.split(":", 1)[0] in BAD):
                print(f"warning: {line}", file=sys.stderr)
    if report["bad"] and not args.skip_bad_images:
        raise InputError(bad_files_message(report, root))
    return report


def short(text, limit=48):
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def bad_files_message(report, root, shown=3):
    """One line for the files that stop training, naming the fix: multi-band TIFFs need --bands, files of another
    band count are their own case, the rest are unreadable; at most ``shown`` files named, and the count."""
    bad = [(kind, p, detail) for kind, p, detail in report["problems"] if p in report["bad"]]
    multi = [b for b in bad if b[0] == "multiband"]
    odd = [b for b in bad if b[0] == "bands"]

    def few(items, kinds=True, details=True):
        named = ", ".join(os.path.relpath(p, root) + (f" ({kind + ': ' if kinds else ''}{short(detail)})"
                                                      if details and detail else f" ({kind})" if kinds else "")
                          for kind, p, detail in items[:shown])  # kinds alone: "a.png (empty-file)"
        return named + (f" and {len(items) - shown} more" if len(items) > shown else "")

    if multi:
        return (f"{len(multi)} file(s) in {root} are {multi[0][2]} TIFFs, which only --bands reads: give --bands all "
                f"or the bands to keep (--bands 4,3,2): {few(multi, kinds=False, details=False)}")
    if odd:
        return (f"{len(odd)} file(s) in {root} differ from most files' {report['bands']} bands: {few(odd, False)}. "
                "Leave them out with --skip-bad-images")
    return (f"{len(bad)} unreadable image(s) in {root}: {few(bad, details=False)}. Leave them out with "
            "--skip-bad-images (scripts/check_dataset.py says why)")


def checked_splits(root, args, dist):
    """The reference split (``--split unseen``: the authors' class-disjoint one), after the file check (made by
    rank 0 alone under torchrun, its report shared)."""
    report = on_main(dist, file_check, root, args)
    splits = build_split(root, args.imgEXT, args.split_seed, args.split, (args.seen_fraction, args.train_fraction),
                         exclude=report["bad"])
    num_images = sum(len(splits[s]) for s in ("train", "val", "test")) + len(report["bad"])
    if (mismatch := preset_mismatch(args.dataset, len(splits["classes"]), num_images)) and dist.is_main:
        print(f"warning: {mismatch}", file=sys.stderr)
    return splits, report


def cache_place(args, device, num_images, bands=None):
    """Where decoded images live: ``--cache``, with auto = the device when they fill under half its free memory."""
    if args.cache != "auto":
        return args.cache
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if num_images * (bands.bytes_per_image_pixel if bands else 3) * args.image_size**2 < free * CACHE_DEVICE_SHARE:
            return "device"
    return "memory"


def make_batches(splits, args, dist, report=None, band_stats=None):
    """Train batches (shuffled per epoch by the returned generator, last partial batch kept) and eval
    batches of the validation and training splits, all as uint8 images on the device; under torchrun each
    rank's part of every batch. Every rank decodes the splits itself; with ``--cache-dir`` rank 0 decodes
    and writes the cache first, and the others read it. With ``--bands``: the chosen bands at the files'
    dtype, and each batches object carries the N-band pipeline (``band_stats``: a resumed run's record)."""
    if not splits["val"]:
        raise InputError("the validation split is empty: with the reference ratios, classes of 1 to 3 or of 6 "
                         "images give no validation image")
    if len(splits["train"]) < 2:
        raise InputError(f"the training split has {len(splits['train'])} image(s): BatchNorm trains on at least 2; "
                         "give each class more images")
    device, generator = dist.device, torch.Generator()
    shard = {"rank": dist.rank, "world_size": dist.world_size}
    try:
        bands = run_band_input(args, (report or {}).get("bands"), splits["train"][0][0], band_stats)
    except BandError as error:
        raise InputError(str(error)) from None
    place = cache_place(args, device, len(splits["train"]) + len(splits["val"]), bands)
    images = {"train": None}
    if place == "none":
        def batches(split, batch_size, **shuffle):
            return DecodingBatches(splits[split], args.image_size, batch_size, device, args.num_workers, **shuffle,
                                   **shard, bands=bands)
    else:
        def decode(samples):
            return decoded_images(samples, args.image_size, args.num_workers, args.cache_dir, bands)

        store = device if place == "device" else torch.device("cpu")
        images = {split: (in_turn(dist, decode, splits[split]) if args.cache_dir else decode(splits[split])).to(store)
                  for split in ("train", "val")}

        def batches(split, batch_size, **shuffle):
            return TensorBatches(images[split], [label for _, label in splits[split]], batch_size, device, **shuffle,
                                 **shard)
    eval_batch_size = args.eval_batch_size or args.batch_size
    made = (batches("train", args.batch_size, shuffle=True, generator=generator), batches("val", eval_batch_size),
            batches("train", eval_batch_size))
    made[0].fold_single = True  # no training step on a single image (BatchNorm): docs/differences.md
    if bands is not None:  # per-band statistics of the training split, once
        bands = training_statistics(bands, splits["train"], args.image_size, args.num_workers, images["train"],
                                    band_stats)
        for each in made:
            each.pipeline = BandPipeline(bands, args.rot90)
    return (*made, generator)
