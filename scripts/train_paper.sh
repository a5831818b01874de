#!/usr/bin/env bash
# Train and evaluate SNCA-CE (MB) and SNCA-CE (MU) on the paper's two datasets with the paper's settings
# (Kang et al., TGRS 2020; all defaults: ResNet-18 from ImageNet, D = 128, T = 0.05, lambda = 1,
# batch 256, SGD lr 0.1 halved every 30 epochs, 130 epochs, validation kNN K = 10 every epoch), SEEDS runs each.
#
#   DATA=/datasets bash scripts/train_paper.sh            # expects /datasets/AID and /datasets/NWPU-RESISC45
#   DATA=/datasets SEEDS=1 OUT=runs/paper bash scripts/train_paper.sh
#   DATA=/datasets DRY_RUN=1 bash scripts/train_paper.sh  # print the plan and the commands only
#
# Settings, run names and the skip/resume rule: scripts/paper_common.sh (the same runs as the other paper scripts').
# The numbers in the comments are the validation kNN@10 plateaus read off the paper's Fig. 4 (NWPU).
set -euo pipefail
source "$(dirname "$0")/paper_common.sh"

plan train_SNCA_CE    snca-ce AID
plan train_SNCA_CE_MC snca-ce AID
plan train_SNCA_CE    snca-ce NWPU-RESISC45  # ~94.0
plan train_SNCA_CE_MC snca-ce NWPU-RESISC45  # ~94.1
run_plan
