#!/usr/bin/env bash
# Train SNCA-CE (MB) and SNCA-CE (MU) on the paper's two datasets with the paper's settings
# (Kang et al., TGRS 2020; all defaults: ResNet-18 from ImageNet, D = 128, T = 0.05, lambda = 1,
# batch 256, SGD lr 0.1 halved every 30 epochs, 130 epochs, validation kNN K = 10 every epoch).
#
#   DATA=/datasets bash scripts/train_paper.sh          # expects /datasets/AID and /datasets/NWPU-RESISC45
#   DATA=/datasets SEED=1 OUT=runs/paper bash scripts/train_paper.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/train_paper.sh  # print the commands only
#
# The numbers in the comments are the validation kNN@10 plateaus read off the paper's Fig. 4 (NWPU).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the folder that holds AID/ and NWPU-RESISC45/}"
SEED=${SEED:-0}
OUT=${OUT:-runs/paper}

run() {
  echo "+ $*"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

common=(--data "$DATA" --imgEXT jpg --seed "$SEED" --out "$OUT")
run python3 train_SNCA_CE/main.py "${common[@]}" --dataset AID --run-name "AID-snca-ce-mb-seed$SEED"
run python3 train_SNCA_CE_MC/main.py "${common[@]}" --dataset AID --run-name "AID-snca-ce-mu-seed$SEED"
run python3 train_SNCA_CE/main.py "${common[@]}" --dataset NWPU-RESISC45 --run-name "NWPU-snca-ce-mb-seed$SEED"  # ~94.0
run python3 train_SNCA_CE_MC/main.py "${common[@]}" --dataset NWPU-RESISC45 --run-name "NWPU-snca-ce-mu-seed$SEED"  # ~94.1
