#!/usr/bin/env bash
# Results you should get on a CPU, by one command: SNCA-CE (MB), SNCA-CE (MU), D-CNN and Triplet trained from scratch
# on one scene dataset, each evaluated on its test split (scripts/evaluate.py), then the table and the learning curves
# (scripts/make_tables.py).
#
#   DATA=/path/to/folder-holding-RSSCN7 bash scripts/cpu_results.sh
#
# These are NOT the paper's settings (ImageNet-initialised ResNet-18, 256 px, batch 256, lr 0.1 halved every 30
# epochs, 130 epochs, on a GPU). They are small enough for a 2-core CPU:
#   --pretrained none --image-size 64 -b 64 --lr 0.01 --epochs 8 (the learning rate stays 0.01: its first halving
#   would come at epoch 30), seed 0, float32 on the CPU; every other flag is the entry points' default (--help).
# Timed on 2 idle cores of an AMD EPYC, an SNCA-CE (MB) epoch takes about 12 s; from that, the four runs should take
# about a quarter of an hour (an estimate: MU also runs its key encoder, Triplet puts three images per anchor through
# the network). On cores busy with other work, OMP_NUM_THREADS=1 is much faster than PyTorch's two threads: with it,
# the four runs took 51 minutes on that machine at a load average of 6-9. benchmarks/RESULTS.md (2026-12-04) records
# what they gave, the command, each run's wall time and these timings.
#
# Settings (environment variables):
#   DATA      folder holding the dataset folder (required)
#   DATASET   the dataset folder's name; a known name (datasets/presets.py) gives --imgEXT (default RSSCN7: jpg)
#   OUT       where the run folders and the tables go (default runs/cpu_results)
#   EPOCHS    training epochs (default 8)
#   DRY_RUN   1: check the commands and print them, run nothing
#   RUNS, TRAIN_ARGS, EVAL_ARGS, EXTRA_ARGS as for the paper scripts, whose steps this script shares
#             (scripts/paper_common.sh): the commands are checked before the first training, a run whose
#             eval/test/results.json exists is skipped, one with a checkpoint but no results is resumed.
#
# Run folders: $OUT/<dataset>-<method>-<mb|mu>-seed0, named as the paper scripts name theirs. Written: $OUT/tables/
# (tables.md, learning_curves.png, ...) and $OUT/wall_times.tsv (seconds of training and of evaluation per run).
set -euo pipefail
: "${DATA:?set DATA to the folder that holds the dataset folder (e.g. RSSCN7/)}"
DATASET=${DATASET:-RSSCN7}
OUT=${OUT:-runs/cpu_results}
EPOCHS=${EPOCHS:-8}
SEEDS=1
ESTIMATE=none  # the paper scripts' estimate is of GPU hours; the header above gives these runs' time
TRAIN_ARGS="--pretrained none --image-size 64 -b 64 --lr 0.01 --device cpu ${TRAIN_ARGS:-}"
EVAL_ARGS="--device cpu ${EVAL_ARGS:-}"
source "$(dirname "$0")/paper_common.sh"

plan train_SNCA_CE    snca-ce "$DATASET"
plan train_SNCA_CE_MC snca-ce "$DATASET"
plan train_SNCA_CE    d-cnn   "$DATASET"
plan train_SNCA_CE    triplet "$DATASET"
run_plan
run python3 scripts/make_tables.py "$OUT"
