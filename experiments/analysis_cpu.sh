#!/usr/bin/env bash
# The figures of docs/ANALYSIS.md at a CPU-sized setting (about 10 minutes on 2 cores).
# Each command is independent; re-run any one to regenerate its figure and JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/cifar10-jpeg.zip}
OUT=${OUT:-docs/analysis}

# Fig. 2 (top row) analogue: power plots of random nets, 7 norms, width 128, depth 50.
proxynorm power --norms bn,ln,in,gn,ln+ws,ln+pn,gn+pn --depth 50 --width 128 --realizations 10 \
  --batch 128 --data "$DATA" --out "$OUT/power"

# Theorem 1 (LN, ReLU and identity) and Fig. 5 analogue (linearity of LN, GN, LN+PN, BN).
proxynorm theory --linearity-norms ln,gn,ln+pn,bn --depth 50 --width 128 --realizations 10 \
  --batch 128 --data "$DATA" --out "$OUT/theory"
