#!/usr/bin/env bash
# Generalisation to unseen classes, the authors' class-disjoint protocol (DataGenClsSplit in their code): each method
# trains on int(0.8 C) seen classes (their images 0.8 train / 0.2 val), then the test images of the other classes are
# retrieved among themselves (each query against all the others): Recall@1/2/4/8, MAP@R, R-precision, mAP, kNN OA.
# All six methods of the paper (Kang et al., TGRS 2020) on AID and NWPU-RESISC45, SEEDS runs each, then the tables.
#
#   DATA=/datasets bash scripts/paper_table_unseen.sh              # expects /datasets/AID and /datasets/NWPU-RESISC45
#   DATA=/datasets SEEDS=5 OUT=runs/paper bash scripts/paper_table_unseen.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/paper_table_unseen.sh    # print the commands only
#
# Settings and the skip/resume rule: scripts/paper_common.sh. Result: $OUT/tables/tables.md, the "(unseen classes)"
# columns of every table ("Metric learning" for Recall@K and MAP@R). The paper reports no number for this protocol,
# so no row carries one.
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

for dataset in AID NWPU-RESISC45; do
  plan train_SNCA_CE    snca-ce "$dataset" unseen
  plan train_SNCA_CE_MC snca-ce "$dataset" unseen
  plan train_SNCA_CE    snca    "$dataset" unseen
  plan train_SNCA_CE_MC snca    "$dataset" unseen
  plan train_SNCA_CE    d-cnn   "$dataset" unseen
  plan train_SNCA_CE    triplet "$dataset" unseen
done
run_plan
run python3 scripts/make_tables.py "$OUT"
