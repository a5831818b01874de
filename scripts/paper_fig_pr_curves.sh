#!/usr/bin/env bash
# The paper's precision-recall curves (Kang et al., TGRS 2020): test images as queries over the training split,
# precision interpolated at 21 recall levels, mean over SEEDS runs, all six methods on AID and NWPU-RESISC45.
#
#   DATA=/datasets bash scripts/paper_fig_pr_curves.sh           # expects /datasets/AID and /datasets/NWPU-RESISC45
#   DATA=/datasets SEEDS=5 OUT=runs/paper bash scripts/paper_fig_pr_curves.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/paper_fig_pr_curves.sh # print the commands only
#
# Settings and the skip/resume rule: scripts/paper_common.sh. Result: $OUT/tables/pr_curves.png.
# The paper's curves give no numbers; their order: the SNCA family far above Triplet, Triplet above D-CNN, and
# the CE term a small gain (docs/reproduce.md).
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

all_paper_runs  # every method on AID and NWPU-RESISC45 (scripts/paper_common.sh)
run_plan
run python3 scripts/make_tables.py "$OUT"
