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
#   TRAIN_ARGS  more flags for every training command (train_SNCA_CE*/main.py), e.g. "--image-size 64 -b 128",
#               "--pretrained none --lr 0.01", "--weights resnet18.pth" (offline); given last, so they win
#   EVAL_ARGS   more flags for every evaluation command (scripts/evaluate.py), e.g. "--batch-size 256"
#   EXTRA_ARGS  flags that both tools take, given to every training and every evaluation command (after
#               TRAIN_ARGS / EVAL_ARGS): "--num_workers 16", "--cache-dir /scratch/cache", "--device cuda:1". A flag
#               only one tool knows (--image-size, -b, --pretrained: training only) fails the check below: put it in
#               TRAIN_ARGS or EVAL_ARGS
#   RUNS        only the runs whose name matches this shell pattern, e.g. 'NWPU-RESISC45-snca-ce-*' (default *, all);
#               the tables are made of the runs there are
#   DRY_RUN     1: make the same checks, print the plan and the commands, run nothing
#   ESTIMATE    gpu (default): the plan line estimates the GPU hours; none: it only counts the runs
#
# Before the first training every command the plan will run is checked (scripts/check_commands.py runs each as
# its tool's --check-args: the flags parse, the paths exist, nothing is written), and DATA must hold the dataset
# folders of the plan; any problem stops the script there, with the tool's own one-line error, nothing trained.
#
# Run folders: $OUT/<dataset>-<method>-<mb|mu>-seed<k>, e.g. runs/paper/NWPU-RESISC45-snca-ce-mu-seed0, the same name
# in every script, so the scripts share their runs: a run whose eval/test/results.json exists is skipped, and a run
# with a checkpoint but no results is resumed, then evaluated. A run of the unseen-class split (--split unseen) is
# $OUT/<dataset>-unseen-<method>-<mb|mu>-seed<k>. $OUT/wall_times.tsv gets one line per run trained here: its name and
# the seconds its training and its evaluation took.
#
# A script lists its runs with `plan ENTRY METHOD DATASET [SPLIT]` (ENTRY: train_SNCA_CE, the memory bank, or
# train_SNCA_CE_MC, the momentum update; SPLIT: reference, the default, or unseen), once per row, and then calls
# `run_plan`: it prints the number of runs and an estimate of their GPU hours, checks every command, then trains and
# evaluates every run for every seed.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${DATA:?set DATA to the folder that holds AID/ and NWPU-RESISC45/}"
SEEDS=${SEEDS:-3}
OUT=${OUT:-runs/paper}
EPOCHS=${EPOCHS:-130}
AMP=${AMP:-none}
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
read -r -a TRAIN_EXTRA <<< "${TRAIN_ARGS:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_ARGS:-}"
if [ ! -d "$DATA" ]; then
  echo "error: DATA=$DATA is not a folder: set DATA to the folder that holds the dataset folders" >&2
  exit 1
fi
case "$AMP" in none|bf16|fp16) ;; *) echo "error: AMP=$AMP is not one of none, bf16, fp16" >&2; exit 1 ;; esac
case "${ESTIMATE:=gpu}" in gpu|none) ;; *) echo "error: ESTIMATE=$ESTIMATE is not one of gpu, none" >&2; exit 1 ;; esac

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

# commands ENTRY METHOD DATASET SEED [SPLIT]: the run's folder in FOLDER, its training and evaluation command lines
# in TRAIN and EVAL; DONE=1 when it is already evaluated (skipped)
commands() {
  local entry=$1 method=$2 dataset=$3 seed=$4 split=${5:-reference}
  NAME=$(run_name "$entry" "$method" "$dataset" "$seed" "$split")
  FOLDER="$OUT/$NAME"
  DONE=0
  if [ -f "$FOLDER/eval/test/results.json" ]; then DONE=1; fi
  TRAIN=(python3 "$entry/main.py" --data "$DATA" --method "$method" --dataset "$dataset" --seed "$seed"
         --epochs "$EPOCHS" --amp "$AMP" --out "$OUT" --run-name "$NAME")
  if [ "$split" != reference ]; then TRAIN+=(--split "$split"); fi
  if [ -f "$FOLDER/checkpoints/last.pt" ]; then TRAIN+=(--resume "$FOLDER"); fi
  TRAIN+=("${TRAIN_EXTRA[@]}" "${EXTRA[@]}")
  EVAL=(python3 scripts/evaluate.py "$FOLDER" "${EVAL_EXTRA[@]}" "${EXTRA[@]}")
}

# train_and_eval ENTRY METHOD DATASET SEED [SPLIT]
train_and_eval() {
  commands "$@"
  if [ "$DONE" = 1 ]; then
    echo "= $NAME: done ($FOLDER/eval/test/results.json)"
    return
  fi
  local start=$SECONDS trained
  run "${TRAIN[@]}"
  trained=$((SECONDS - start))
  run "${EVAL[@]}"
  if [ "${DRY_RUN:-0}" != 1 ]; then
    if [ ! -f "$OUT/wall_times.tsv" ]; then printf 'run\ttrain_s\teval_s\n' > "$OUT/wall_times.tsv"; fi
    printf '%s\t%d\t%d\n' "$NAME" "$trained" $((SECONDS - start - trained)) >> "$OUT/wall_times.tsv"
  fi
}

# check_plan: every command of the plan still to run passes its tool's --check-args, and DATA holds every dataset
# of the plan; else the script stops here, before the first training (DRY_RUN too)
check_plan() {
  local row entry method dataset split seed missing=() checked=()
  for seed in $(seq 0 $((SEEDS - 1))); do
    for row in "${PLAN[@]}"; do
      read -r entry method dataset split <<< "$row"
      commands "$entry" "$method" "$dataset" "$seed" "$split"
      if [ "$DONE" = 1 ] || ! selected "$NAME"; then continue; fi
      checked+=("${TRAIN[@]}" "" "${EVAL[@]}" "")  # an empty argument ends a command
      if [ ! -d "$DATA/$dataset" ] && [[ " ${missing[*]} " != *" $dataset "* ]]; then missing+=("$dataset"); fi
    done
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "error: DATA=$DATA holds no ${missing[*]/%//} folder(s): set DATA to the folder that holds them" >&2
    exit 1
  fi
  if [ ${#checked[@]} -gt 0 ] && ! printf '%s\0' "${checked[@]}" | python3 scripts/check_commands.py --null; then
    echo "error: nothing trained: flags of training alone go in TRAIN_ARGS, of evaluation alone in EVAL_ARGS;" \
         "EXTRA_ARGS reaches both (scripts/paper_common.sh)" >&2
    exit 1
  fi
}

# GPU time of one run, in seconds, from the figures of benchmarks/RESULTS.md (one H200, ResNet-18, data decoded once
# and kept on the GPU). "NWPU-sized epoch ... validation included", bf16 (2026-11-26 18:52): 4.45 s MB, 5.34 s MU for
# 22,005 training + 3,195 validation images. float32 (--amp none) is slower by the ratio of the training throughputs,
# float32 (2026-11-26, 3,959 MB / 3,132 MU images/s) to bf16 (2026-11-26 18:52, 6,659 / 4,978): x1.68 MB, x1.59 MU.
# An epoch scales with the training + validation images (80 % of the dataset) and with the pixels of an image,
# (S / 256)^2 for --image-size S (an assumption: the benchmark ran at 256 px); Triplet puts three images per anchor
# through the network, so x3. The epochs, image size and precision are those the training commands get (EPOCHS,
# AMP, or --epochs, --image-size, --amp in TRAIN_ARGS / EXTRA_ARGS); every other flag (-b, --model, --cache ...)
# is taken at its default. Not counted: the first epoch's decoding and the evaluation (minutes per run).
flag_value() {  # flag_value FLAG DEFAULT: the last value of FLAG (--flag V or --flag=V) in TRAIN_ARGS, EXTRA_ARGS
  local value=$2 words=("${TRAIN_EXTRA[@]}" "${EXTRA[@]}") i
  for ((i = 0; i < ${#words[@]}; i++)); do
    case "${words[i]}" in
      "$1") value=${words[i + 1]:-$value} ;;
      "$1"=*) value=${words[i]#*=} ;;
    esac
  done
  echo "$value"
}

run_seconds() {  # run_seconds ENTRY METHOD DATASET
  local images
  case "$3" in
    AID) images=10000 ;;
    NWPU-RESISC45) images=31500 ;;
    *) images=31500 ;;
  esac
  awk -v entry="$1" -v method="$2" -v images="$images" -v epochs="$(flag_value --epochs "$EPOCHS")" \
      -v amp="$(flag_value --amp "$AMP")" -v size="$(flag_value --image-size 256)" 'BEGIN {
    mu = (entry == "train_SNCA_CE_MC")
    epoch = (mu ? 5.34 : 4.45) / (22005 + 3195) * 0.8 * images * (size / 256) ^ 2
    if (amp == "none") epoch *= (mu ? 1.59 : 1.68)
    if (method == "triplet") epoch *= 3
    printf "%.0f\n", epoch * epochs
  }'
}

selected() {  # selected NAME: the run is in RUNS
  # shellcheck disable=SC2053
  [[ $1 == ${RUNS:-*} ]]
}

PLAN=()
plan() {  # plan ENTRY METHOD DATASET [SPLIT]: one run per seed; SPLIT is the entry points' --split (reference)
  PLAN+=("$1 $2 $3 ${4:-reference}")
}

run_plan() {
  local row entry method dataset split seed name total=0 todo=0 seconds=0
  for seed in $(seq 0 $((SEEDS - 1))); do
    for row in "${PLAN[@]}"; do
      read -r entry method dataset split <<< "$row"
      name=$(run_name "$entry" "$method" "$dataset" "$seed" "$split")
      if ! selected "$name"; then continue; fi
      total=$((total + 1))
      if [ ! -f "$OUT/$name/eval/test/results.json" ]; then
        todo=$((todo + 1))
        seconds=$((seconds + $(run_seconds "$entry" "$method" "$dataset")))
      fi
    done
  done
  local precision="float32" amp size
  amp=$(flag_value --amp "$AMP")
  size=$(flag_value --image-size 256)
  if [ "$amp" != none ]; then precision="$amp autocast"; fi
  local line="plan: $total runs ($((total - todo)) already evaluated, $todo to train and evaluate)"
  if [ "$ESTIMATE" = none ]; then
    echo "$line"
  else
    echo "$line, about" \
       "$(awk -v s="$seconds" 'BEGIN { printf "%.2f", s / 3600 }') GPU hours on one H200 in $precision," \
       "$(flag_value --epochs "$EPOCHS") epochs, $SEEDS seed(s), $size px (time assumed to scale with the pixels," \
       "(S/256)^2; other flags at their defaults; evaluation and first decoding not counted; from" \
       "benchmarks/RESULTS.md: scripts/paper_common.sh, docs/reproduce.md)"
  fi
  check_plan
  for seed in $(seq 0 $((SEEDS - 1))); do
    for row in "${PLAN[@]}"; do
      read -r entry method dataset split <<< "$row"
      if selected "$(run_name "$entry" "$method" "$dataset" "$seed" "$split")"; then
        train_and_eval "$entry" "$method" "$dataset" "$seed" "$split"
      fi
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
