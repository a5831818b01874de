# Shared by every scripts/paper_*.sh and scripts/train_paper.sh (source it, do not run it): the settings, one
# naming scheme, and the one step every table and figure is made of, train a run then evaluate it on the test split.
# docs/reproduce.md says what each script reproduces, with the paper's numbers, time and disk.
#
# Settings (environment variables, the same for every script):
#   DATA        folder that holds AID/ and NWPU-RESISC45/ (required)
#   SEEDS       runs per method and dataset, seeds 0 .. SEEDS-1 (default 3)
#   OUT         where the run folders go, relative to the repository root (default runs/paper)
#   EPOCHS      training epochs (default 130, the paper's)
#   AMP         training precision: none (default: float32, as the authors trained), bf16 or fp16 (faster, not the
#               authors' numerics; docs/performance.md, "Precision"); evaluation is float32 either way
#   EXTRA_ARGS  more flags for every training and evaluation command, e.g. "--num_workers 16", "--weights
#               resnet18.pth" (offline), "--cache-dir /scratch/cache"; given last, so they win over the script's
#   DRY_RUN     1: print the plan and the commands, run nothing
#
# Run folders: $OUT/<dataset>-<method>-<mb|mu>-seed<k>, e.g. runs/paper/NWPU-RESISC45-snca-ce-mu-seed0, the same name
# in every script, so the scripts share their runs: a run whose eval/test/results.json exists is skipped, and a run
# with a checkpoint but no results is resumed, then evaluated. A run of the unseen-class split (--split unseen) is
# $OUT/<dataset>-unseen-<method>-<mb|mu>-seed<k>.
#
# A script lists its runs with `plan ENTRY METHOD DATASET [SPLIT]` (ENTRY: train_SNCA_CE, the memory bank, or
# train_SNCA_CE_MC, the momentum update; SPLIT: reference, the default, or unseen), once per row, and then calls `run_plan`: it prints the number of runs
# and an estimate of their GPU hours, then trains and evaluates every run for every seed.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${DATA:?set DATA to the folder that holds AID/ and NWPU-RESISC45/}"
SEEDS=${SEEDS:-3}
OUT=${OUT:-runs/paper}
EPOCHS=${EPOCHS:-130}
AMP=${AMP:-none}
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
if [ "${DRY_RUN:-0}" != 1 ] && [ ! -d "$DATA" ]; then
  echo "error: DATA=$DATA is not a folder" >&2
  exit 1
fi
case "$AMP" in none|bf16|fp16) ;; *) echo "error: AMP=$AMP is not one of none, bf16, fp16" >&2; exit 1 ;; esac

run() {
  echo "+ $*"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

run_name() {  # run_name ENTRY METHOD DATASET SEED [SPLIT]: a --split other than reference follows the dataset
  local memory=mb dataset=$3
  if [ "$1" = train_SNCA_CE_MC ]; then memory=mu; fi
  if [ "${5:-reference}" != reference ]; then dataset="$3-$5"; fi
  echo "$dataset-$2-$memory-seed$4"
}

# train_and_eval ENTRY METHOD DATASET SEED [SPLIT]
train_and_eval() {
  local entry=$1 method=$2 dataset=$3 seed=$4 split=${5:-reference}
  local name folder
  name=$(run_name "$entry" "$method" "$dataset" "$seed" "$split")
  folder="$OUT/$name"
  if [ -f "$folder/eval/test/results.json" ]; then
    echo "= $name: done ($folder/eval/test/results.json)"
    return
  fi
  local train=(python3 "$entry/main.py" --data "$DATA" --method "$method" --dataset "$dataset" --seed "$seed"
               --epochs "$EPOCHS" --amp "$AMP" --out "$OUT" --run-name "$name")
  if [ "$split" != reference ]; then train+=(--split "$split"); fi
  if [ -f "$folder/checkpoints/last.pt" ]; then train+=(--resume "$folder"); fi
  run "${train[@]}" "${EXTRA[@]}"
  run python3 scripts/evaluate.py "$folder" "${EXTRA[@]}"
}

# GPU time of one run, in seconds, from the figures of benchmarks/RESULTS.md (one H200, ResNet-18, data decoded once
# and kept on the GPU). "NWPU-sized epoch ... validation included", bf16 (2026-11-26 18:52): 4.45 s MB, 5.34 s MU for
# 22,005 training + 3,195 validation images. float32 (--amp none) is slower by the ratio of the training throughputs,
# float32 (2026-11-26, 3,959 MB / 3,132 MU images/s) to bf16 (2026-11-26 18:52, 6,659 / 4,978): x1.68 MB, x1.59 MU.
# An epoch scales with the training + validation images (80 % of the dataset); Triplet puts three images per anchor
# through the network, so x3. Not counted: the first epoch's decoding and the evaluation (minutes per run).
run_seconds() {  # run_seconds ENTRY METHOD DATASET
  local images
  case "$3" in
    AID) images=10000 ;;
    NWPU-RESISC45) images=31500 ;;
    *) images=31500 ;;
  esac
  awk -v entry="$1" -v method="$2" -v images="$images" -v epochs="$EPOCHS" -v amp="$AMP" 'BEGIN {
    mu = (entry == "train_SNCA_CE_MC")
    epoch = (mu ? 5.34 : 4.45) / (22005 + 3195) * 0.8 * images
    if (amp == "none") epoch *= (mu ? 1.59 : 1.68)
    if (method == "triplet") epoch *= 3
    printf "%.0f\n", epoch * epochs
  }'
}

PLAN=()
plan() {  # plan ENTRY METHOD DATASET [SPLIT]: one run per seed; SPLIT is the entry points' --split (reference)
  PLAN+=("$1 $2 $3 ${4:-reference}")
}

run_plan() {
  local row entry method dataset split seed total=0 todo=0 seconds=0
  for seed in $(seq 0 $((SEEDS - 1))); do
    for row in "${PLAN[@]}"; do
      read -r entry method dataset split <<< "$row"
      total=$((total + 1))
      if [ ! -f "$OUT/$(run_name "$entry" "$method" "$dataset" "$seed" "$split")/eval/test/results.json" ]; then
        todo=$((todo + 1))
        seconds=$((seconds + $(run_seconds "$entry" "$method" "$dataset")))
      fi
    done
  done
  local precision="float32"
  if [ "$AMP" != none ]; then precision="$AMP autocast"; fi
  echo "plan: $total runs ($((total - todo)) already evaluated, $todo to train and evaluate), about" \
       "$(awk -v s="$seconds" 'BEGIN { printf "%.1f", s / 3600 }') GPU hours on one H200 in $precision," \
       "$EPOCHS epochs (estimate from benchmarks/RESULTS.md: scripts/paper_common.sh, docs/reproduce.md)"
  for seed in $(seq 0 $((SEEDS - 1))); do
    for row in "${PLAN[@]}"; do
      read -r entry method dataset split <<< "$row"
      train_and_eval "$entry" "$method" "$dataset" "$seed" "$split"
    done
  done
}

# all_paper_runs: the six methods of the paper on both datasets, for the tables and figures whose rows carry no
# number of the paper's (the others list their rows with the paper's numbers beside them).
all_paper_runs() {
  local dataset
  for dataset in AID NWPU-RESISC45; do
    plan train_SNCA_CE    snca-ce "$dataset"
    plan train_SNCA_CE_MC snca-ce "$dataset"
    plan train_SNCA_CE    snca    "$dataset"
    plan train_SNCA_CE_MC snca    "$dataset"
    plan train_SNCA_CE    d-cnn   "$dataset"
    plan train_SNCA_CE    triplet "$dataset"
  done
}
