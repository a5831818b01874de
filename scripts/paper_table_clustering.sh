#!/usr/bin/env bash
# K-means clustering of the test embeddings (k = number of classes; accuracy after Hungarian matching, NMI),
# all six methods of the paper (Kang et al., TGRS 2020) on AID and NWPU-RESISC45, SEEDS runs each, then the tables.
#
#   DATA=/datasets bash scripts/paper_table_clustering.sh           # expects /datasets/AID and /datasets/NWPU-RESISC45
#   DATA=/datasets SEEDS=5 OUT=runs/paper bash scripts/paper_table_clustering.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/paper_table_clustering.sh # print the commands only
#
# Settings and the skip/resume rule: scripts/paper_common.sh. Result: $OUT/tables/tables.md, "Clustering" table.
# No clustering number, from the paper or its follow-up, has been checked (docs/reproduce.md), hence no comments.
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

all_paper_runs  # every method on AID and NWPU-RESISC45 (scripts/paper_common.sh)
run_plan
run python3 scripts/make_tables.py "$OUT"
