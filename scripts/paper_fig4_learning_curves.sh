#!/usr/bin/env bash
# Fig. 4 of the paper (Kang et al., TGRS 2020): validation kNN@10 accuracy per epoch on NWPU-RESISC45, all six
# methods, SEEDS runs each (mean line, min..max band), then the figure and tables.
#
#   DATA=/datasets bash scripts/paper_fig4_learning_curves.sh           # expects /datasets/NWPU-RESISC45
#   DATA=/datasets SEEDS=5 OUT=runs/paper bash scripts/paper_fig4_learning_curves.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/paper_fig4_learning_curves.sh # print the commands only
#
# Settings and the skip/resume rule: scripts/paper_common.sh. Result: $OUT/tables/learning_curves.png and the
# "Validation" table. The numbers in the comments are the plateaus (%) read off the paper's Fig. 4.
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

for seed in $(seq 0 $((SEEDS - 1))); do
  train_and_eval train_SNCA_CE    snca-ce NWPU-RESISC45 "$seed"  # ~94.0
  train_and_eval train_SNCA_CE_MC snca-ce NWPU-RESISC45 "$seed"  # ~94.1
  train_and_eval train_SNCA_CE    snca    NWPU-RESISC45 "$seed"  # ~92.3
  train_and_eval train_SNCA_CE_MC snca    NWPU-RESISC45 "$seed"  # ~93.8
  train_and_eval train_SNCA_CE    d-cnn   NWPU-RESISC45 "$seed"  # ~91.6
  train_and_eval train_SNCA_CE    triplet NWPU-RESISC45 "$seed"  # ~90.7
done
run python3 scripts/make_tables.py "$OUT"
