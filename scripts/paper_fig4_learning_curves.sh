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

plan train_SNCA_CE    snca-ce NWPU-RESISC45  # ~94.0
plan train_SNCA_CE_MC snca-ce NWPU-RESISC45  # ~94.1
plan train_SNCA_CE    snca    NWPU-RESISC45  # ~92.3
plan train_SNCA_CE_MC snca    NWPU-RESISC45  # ~93.8
plan train_SNCA_CE    d-cnn   NWPU-RESISC45  # ~91.6
plan train_SNCA_CE    triplet NWPU-RESISC45  # ~90.7
run_plan
run python3 scripts/make_tables.py "$OUT"
