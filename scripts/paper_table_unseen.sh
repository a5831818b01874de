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
# columns of the "Metric learning" and retrieval tables. The paper reports no number for this protocol.
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

for seed in $(seq 0 $((SEEDS - 1))); do
  for dataset in AID NWPU-RESISC45; do
    train_and_eval train_SNCA_CE    snca-ce "$dataset" "$seed" unseen
    train_and_eval train_SNCA_CE_MC snca-ce "$dataset" "$seed" unseen
    train_and_eval train_SNCA_CE    snca    "$dataset" "$seed" unseen
    train_and_eval train_SNCA_CE_MC snca    "$dataset" "$seed" unseen
    train_and_eval train_SNCA_CE    d-cnn   "$dataset" "$seed" unseen
    train_and_eval train_SNCA_CE    triplet "$dataset" "$seed" unseen
  done
done
run python3 scripts/make_tables.py "$OUT"
