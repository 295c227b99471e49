#!/usr/bin/env bash
# CIFAR-10 (JPEG) norm comparison at a CPU-sized protocol (issue 8), through the public CLI only.
# Resumable: finished runs (final.json, committed) are skipped, interrupted ones resume from
# their checkpoint (not committed; a run interrupted across sessions restarts).
#
# Protocol: resnet20 (full width), class-balanced 10k-image training subset, full 10k test set,
# 20 epochs of the cifar recipe scaled to that length (warmup 0.625 epochs, decays at epochs
# 10 and 15), GN with 8 groups for GN and GN+PN alike.
#   - batch 128 (BN over 128 inputs), 3 seeds: bn, gn, gn+pn, ln, ln+pn (estimate: ~2.5 h on 2 cores)
#   - batch 8 (BN over 8 inputs, lr scaled to 0.1 x 8/128), 2 seeds: bn, gn+pn (estimate: ~1.5 h)
# A fixed probe batch of 128 test images is power-decomposed after every epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg.zip}
OUT=${OUT:-experiments/results/cifar10_cpu}
COMMON=(--model resnet20 --data cifar10 --data-dir "$DATA" --recipe cifar --subset 10000
        --epochs 20 --groups 8 --channels-last --probe 128)

# Seed-major order (compare --seeds K trains seeds 0..K-1 and skips finished ones), so that a
# partial run already covers every norm and both batch sizes.
for k in 1 2 3; do
  proxynorm compare --norms bn,gn,gn+pn,ln,ln+pn --seeds "$k" --batch-size 128 "${COMMON[@]}" \
    --out "$OUT/batch128"
  if [ "$k" -le 2 ]; then
    proxynorm compare --norms bn,gn+pn --seeds "$k" --batch-size 8 --norm-batch 8 "${COMMON[@]}" \
      --out "$OUT/batch8"
  fi
done
