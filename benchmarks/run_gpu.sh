#!/usr/bin/env bash
# GPU benchmark (issue 19): resnet50 at 32 and 2 images per device, resnet20 at 128 and 8; BN, GN,
# GN+PN fused and reference; eager and compiled; bf16 autocast. Under 3 minutes on one GPU
# (tables left when the budget is spent are listed as skipped). Writes benchmarks/results/gpu/.
# On the lent GPU machine (DEVELOPERS.md), the repository is there without an install:
#   PYTHONPATH=. bash benchmarks/run_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 benchmarks/gpu_bench.py --budget 150 --out "$OUT" "$@"
