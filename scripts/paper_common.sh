# Shared by scripts/paper_*.sh (source it, do not run it): settings from the environment and the one step
# every table and figure is made of, train a run then evaluate it on the test split.
#
#   DATA     folder that holds AID/ and NWPU-RESISC45/ (required)
#   SEEDS    runs per method and dataset, seeds 0 .. SEEDS-1 (default 3)
#   OUT      where the run folders go, relative to the repository root (default runs/paper)
#   EPOCHS   training epochs (default 130, the paper's)
#   DRY_RUN  1: print the commands only
#
# Run folders are named <dataset>-<method>-<mb|mu>-seed<S>, so the scripts share their runs: a run whose
# eval/test/results.json exists is skipped, and a run with a checkpoint but no results is resumed, then evaluated.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${DATA:?set DATA to the folder that holds AID/ and NWPU-RESISC45/}"
SEEDS=${SEEDS:-3}
OUT=${OUT:-runs/paper}
EPOCHS=${EPOCHS:-130}
if [ "${DRY_RUN:-0}" != 1 ] && [ ! -d "$DATA" ]; then
  echo "error: DATA=$DATA is not a folder" >&2
  exit 1
fi

run() {
  echo "+ $*"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

# train_and_eval ENTRY METHOD DATASET SEED [SPLIT], ENTRY being train_SNCA_CE (memory bank) or train_SNCA_CE_MC
# (momentum); SPLIT the entry points' --split (default reference; an unseen run is named <dataset>-unseen-...)
train_and_eval() {
  local entry=$1 method=$2 dataset=$3 seed=$4 split=${5:-reference} memory=mb
  if [ "$entry" = train_SNCA_CE_MC ]; then memory=mu; fi
  local name="$dataset-$method-$memory-seed$seed"
  if [ "$split" != reference ]; then name="$dataset-$split-$method-$memory-seed$seed"; fi
  local folder="$OUT/$name"
  if [ -f "$folder/eval/test/results.json" ]; then
    echo "= $name: done ($folder/eval/test/results.json)"
    return
  fi
  local train=(python3 "$entry/main.py" --data "$DATA" --method "$method" --dataset "$dataset" --seed "$seed"
               --epochs "$EPOCHS" --out "$OUT" --run-name "$name")
  if [ "$split" != reference ]; then train+=(--split "$split"); fi
  if [ -f "$folder/checkpoints/last.pt" ]; then train+=(--resume "$folder"); fi
  run "${train[@]}"
  run python3 scripts/evaluate.py "$folder"
}

# all_paper_runs: the six methods of the paper on both datasets, every seed, for the tables and figures whose rows
# carry no number of the paper's (the others list their rows with the paper's numbers beside them).
all_paper_runs() {
  local seed dataset
  for seed in $(seq 0 $((SEEDS - 1))); do
    for dataset in AID NWPU-RESISC45; do
      train_and_eval train_SNCA_CE    snca-ce "$dataset" "$seed"
      train_and_eval train_SNCA_CE_MC snca-ce "$dataset" "$seed"
      train_and_eval train_SNCA_CE    snca    "$dataset" "$seed"
      train_and_eval train_SNCA_CE_MC snca    "$dataset" "$seed"
      train_and_eval train_SNCA_CE    d-cnn   "$dataset" "$seed"
      train_and_eval train_SNCA_CE    triplet "$dataset" "$seed"
    done
  done
}
