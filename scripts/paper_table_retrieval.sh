#!/usr/bin/env bash
# Image retrieval on the test split (queries: test images, database: training split; mAP, mAP@20/50/100, P@k,
# R-precision, ANMRR), all six methods of the paper (Kang et al., TGRS 2020) on AID and NWPU-RESISC45, then the tables.
#
#   DATA=/datasets bash scripts/paper_table_retrieval.sh           # expects /datasets/AID and /datasets/NWPU-RESISC45
#   DATA=/datasets SEEDS=5 OUT=runs/paper bash scripts/paper_table_retrieval.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/paper_table_retrieval.sh # print the commands only
#
# Settings and the skip/resume rule: scripts/paper_common.sh. Result: $OUT/tables/tables.md, "Retrieval" tables.
# The numbers in the comments are test mAP@20 (%) of SNCA reported by a follow-up paper of the authors, not yet
# identified with certainty (docs/reproduce.md, "Which follow-up").
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

plan train_SNCA_CE    snca-ce AID
plan train_SNCA_CE_MC snca-ce AID
plan train_SNCA_CE    snca    AID  # 99.16 (follow-up paper, SNCA)
plan train_SNCA_CE_MC snca    AID
plan train_SNCA_CE    d-cnn   AID
plan train_SNCA_CE    triplet AID
plan train_SNCA_CE    snca-ce NWPU-RESISC45
plan train_SNCA_CE_MC snca-ce NWPU-RESISC45
plan train_SNCA_CE    snca    NWPU-RESISC45  # 98.94 (follow-up paper, SNCA)
plan train_SNCA_CE_MC snca    NWPU-RESISC45
plan train_SNCA_CE    d-cnn   NWPU-RESISC45
plan train_SNCA_CE    triplet NWPU-RESISC45
run_plan
run python3 scripts/make_tables.py "$OUT"
