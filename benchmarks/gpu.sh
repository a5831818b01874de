#!/usr/bin/env bash
# Every GPU benchmark in one call, within 8 minutes on one H100 / H200: prints one table and appends it
# to benchmarks/RESULTS.md.
#   bash benchmarks/gpu.sh                      # generated data only
#   DATA=/datasets bash benchmarks/gpu.sh       # also the reference PIL pipeline on DATA/RSSCN7 (jpg)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
args=(--gpu --workers "${WORKERS:-16}")
if [ -n "${DATA:-}" ]; then args+=(--data "$DATA"); fi
python3 benchmarks/run.py "${args[@]}"
