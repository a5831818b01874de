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
#   DRY_RUN   1: print the commands, run nothing
#
# Run folders: $OUT/<dataset>-<method>-<mb|mu>-seed0, named as the paper scripts name theirs. A run whose
# eval/test/results.json exists is skipped, one with a checkpoint but no results is resumed. Written: $OUT/tables/
# (tables.md, learning_curves.png, ...) and $OUT/wall_times.tsv (seconds of training and of evaluation per run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${DATA:?set DATA to the folder that holds the dataset folder (e.g. RSSCN7/)}"
DATASET=${DATASET:-RSSCN7}
OUT=${OUT:-runs/cpu_results}
EPOCHS=${EPOCHS:-8}
SETTINGS=(--pretrained none --image-size 64 -b 64 --lr 0.01 --seed 0 --device cpu)

run() {
  echo "+ $*"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

train_and_eval() {  # train_and_eval ENTRY METHOD
  local memory=mb
  if [ "$1" = train_SNCA_CE_MC ]; then memory=mu; fi
  local name="$DATASET-$2-$memory-seed0"
  local folder="$OUT/$name"
  if [ -f "$folder/eval/test/results.json" ]; then
    echo "= $name: done ($folder/eval/test/results.json)"
    return
  fi
  local train=(python3 "$1/main.py" --data "$DATA" --dataset "$DATASET" --method "$2" --epochs "$EPOCHS"
               "${SETTINGS[@]}" --out "$OUT" --run-name "$name")
  if [ -f "$folder/checkpoints/last.pt" ]; then train+=(--resume "$folder"); fi
  local start=$SECONDS
  run "${train[@]}"
  local trained=$((SECONDS - start))
  run python3 scripts/evaluate.py "$folder" --device cpu
  if [ "${DRY_RUN:-0}" != 1 ]; then
    if [ ! -f "$OUT/wall_times.tsv" ]; then printf 'run\ttrain_s\teval_s\n' > "$OUT/wall_times.tsv"; fi
    printf '%s\t%d\t%d\n' "$name" "$trained" $((SECONDS - start - trained)) >> "$OUT/wall_times.tsv"
  fi
}

train_and_eval train_SNCA_CE snca-ce
train_and_eval train_SNCA_CE_MC snca-ce
train_and_eval train_SNCA_CE d-cnn
train_and_eval train_SNCA_CE triplet
run python3 scripts/make_tables.py "$OUT"
