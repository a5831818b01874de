#!/usr/bin/env bash
# The test suite under the kernels of other processors, one setting at a time, on this machine:
#
#   ATEN_CPU_CAPABILITY=default     PyTorch's plain C++ kernels (no AVX)
#   ATEN_CPU_CAPABILITY=avx2        PyTorch's AVX2 kernels (an AMD EPYC or an older Intel: no AVX-512)
#   ONEDNN_MAX_CPU_ISA=AVX2         oneDNN (convolutions, some matrix products) limited to AVX2: no AMX
#   MKL_ENABLE_INSTRUCTIONS=AVX2    MKL (matrix products) limited to AVX2
#   MKL_CBWR=AVX2                   MKL's conditional numerical reproducibility: the results of an AVX2 machine
#   OMP_NUM_THREADS=1               one thread: every reduction that threads split, summed in another order
#
# A tolerance that holds only with this machine's kernels fails here. torch.compile's kernels are compiled afresh
# for each instruction set (PyTorch's on-disk cache is not told apart by ATEN_CPU_CAPABILITY), as on another
# machine: the first setting of each takes the compilation's minutes. Arguments go to pytest, e.g.
#   tests/other_cpus.sh tests/test_knn.py -x       (default: the whole suite, -q)
# Prints one line per setting and exits non-zero if any setting failed.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SETTINGS=(
  "ATEN_CPU_CAPABILITY=default"
  "ATEN_CPU_CAPABILITY=avx2"
  "ONEDNN_MAX_CPU_ISA=AVX2"
  "MKL_ENABLE_INSTRUCTIONS=AVX2"
  "MKL_CBWR=AVX2"
  "OMP_NUM_THREADS=1"
)
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(-q)
failed=0
summary=()
caches=$(mktemp -d)
trap 'rm -rf "$caches"' EXIT
for setting in "${SETTINGS[@]}"; do
  echo "=== $setting python3 -m pytest ${ARGS[*]}"
  start=$SECONDS
  isa=native
  [[ $setting == ATEN_CPU_CAPABILITY=* ]] && isa=${setting#*=}
  if env "$setting" TORCHINDUCTOR_CACHE_DIR="$caches/$isa" python3 -m pytest "${ARGS[@]}"; then
    result=passed
  else
    result=FAILED
    failed=1
  fi
  summary+=("$setting: $result ($((SECONDS - start)) s)")
done
printf '%s\n' "${summary[@]}"
exit $failed
