#!/usr/bin/env bash
# The CPU benchmark tables of docs/PERFORMANCE.md (issue 7). Pause other CPU work while it runs:
# every number is a ratio within one process, but a busy machine still adds noise.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
# 1. Layers and training steps as users run them (glibc's default allocator).
proxynorm bench --models resnet20,resnet50 --compile resnet20 --repeats 10 --out "$OUT/cpu"
# 2. resnet20 at batch 8, eager and compiled: PN's per-step cost does not shrink with the batch.
proxynorm bench --models resnet20-b8 --compile resnet20-b8 --repeats 20 --out "$OUT/cpu-b8"
# 3. The same resnet20 steps with glibc told to keep large blocks instead of returning them to
#    the OS after every step (fewer page faults; see docs/PERFORMANCE.md).
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 \
  proxynorm bench --models resnet20 --repeats 10 --out "$OUT/cpu-malloc"
# 4. Every batch size of issue 19, eager, with the opt-in C++ GN+PN kernel beside the Python path
#    (builds it first if needed, ~1 min), and PN's fixed per-layer cost on both paths.
proxynorm bench --models resnet20,resnet20-b1,resnet20-b2,resnet20-b4,resnet20-b8,resnet50r-b2,resnet50r-b8 \
  --cpp --repeats 10 --out "$OUT/cpu-cpp"
OMP_NUM_THREADS=1 python benchmarks/pn_overhead.py > "$OUT/pn_overhead.md"
OMP_NUM_THREADS=1 PROXYNORM_CPP=1 python benchmarks/pn_overhead.py > "$OUT/pn_overhead_cpp.md"
# 5. The same per-layer cost compiled, by number of proxy quantiles (the C x n share of it).
OMP_NUM_THREADS=1 python benchmarks/pn_overhead.py --compile --n-samples 2,256,2048 \
  > "$OUT/pn_overhead_compiled.md"
# 6. Compiled small-batch cost taken apart, variants in one process (docs/PERFORMANCE.md).
C="$OUT/compiled_cost"; mkdir -p "$C"; export OMP_NUM_THREADS=2
V="GN+PN before,GN+PN C×n one-pass,GN+PN"  # the path before this work, the last step, now
python benchmarks/compiled_layer_cost.py --json "$C/stack_c16.json" > "$C/stack_c16.md"
python benchmarks/compiled_layer_cost.py --model resnet20-b1 --rounds 600 \
  --variants "$V" --json "$C/resnet20-b1.json" > "$C/resnet20-b1.md"
python benchmarks/compiled_layer_cost.py --model resnet20-b1 --channels-last --rounds 600 \
  --variants "$V" --json "$C/resnet20-b1-cl.json" > "$C/resnet20-b1-cl.md"
python benchmarks/compiled_layer_cost.py --model resnet50r-b2 --rounds 100 \
  --variants "$V" --json "$C/resnet50r-b2.json" > "$C/resnet50r-b2.md"
python benchmarks/compiled_layer_cost.py --model resnet50r-b2 --rounds 100 \
  --variants "GN+PN,GN+PN n=16,GN+PN no proxy affine" --json "$C/resnet50r-b2-parts.json" \
  > "$C/resnet50r-b2-parts.md"
# 7. The compiled columns after ReLU's closed form (docs/PERFORMANCE.md, issue 19's targets).
proxynorm bench --models resnet20,resnet20-b1,resnet20-b8,resnet50r-b2 \
  --compile resnet20,resnet20-b1,resnet20-b8,resnet50r-b2 --repeats 10 --out "$OUT/cpu-compiled"
# 8. Where the compiled per-layer difference goes: inductor's kernels or the graph wrappers'
#    Python, at resnet20's first stage at batch 1 and at 128 channels (docs/PERFORMANCE.md).
mkdir -p "$C/split"
python benchmarks/compiled_split.py --json "$C/split/resnet20-stage1-b1.json" \
  > "$C/split/resnet20-stage1-b1.md"
python benchmarks/compiled_split.py --shape 2,128,8,8 --json "$C/split/c128-b2.json" \
  > "$C/split/c128-b2.md"
# 9. A training step with the optimizer: SGD for-loop, foreach and fused (what build_optimizer
#    uses where torch has it), GN+ReLU and GN+PN (docs/PERFORMANCE.md).
S="$OUT/optimizer_step"; mkdir -p "$S"
python benchmarks/optimizer_step.py --model resnet20-b1 --compile --rounds 300 \
  --json "$S/resnet20-b1-compiled.json" > "$S/resnet20-b1-compiled.md"
python benchmarks/optimizer_step.py --model resnet50r-b2 --compile --rounds 60 \
  --json "$S/resnet50r-b2-compiled.json" > "$S/resnet50r-b2-compiled.md"
python benchmarks/optimizer_step.py --model resnet20-b1 --rounds 100 \
  --json "$S/resnet20-b1-eager.json" > "$S/resnet20-b1-eager.md"
python benchmarks/optimizer_step.py --model resnet20 --rounds 30 \
  --json "$S/resnet20-b128-eager.json" > "$S/resnet20-b128-eager.md"
# 10. What GN+PN adds to the compiled graphs' wrappers per norm-act layer (buffers, size checks,
#     kernel arguments, saved tensors), counted in inductor's output code; and the step with
#     inductor's size checks off (docs/PERFORMANCE.md).
mkdir -p "$C/census" "$C/inductor_options"
for M in resnet20-b1 resnet50r-b2; do
  python benchmarks/compiled_census.py --model "$M" --json "$C/census/$M.json" > "$C/census/$M.md"
done
python benchmarks/compiled_layer_cost.py --model resnet20-b1 --variants GN+PN --rounds 300 \
  --json "$C/inductor_options/resnet20-b1-default.json" > "$C/inductor_options/resnet20-b1-default.md"
python benchmarks/compiled_layer_cost.py --model resnet20-b1 --variants GN+PN --rounds 300 \
  --inductor size_asserts=False --json "$C/inductor_options/resnet20-b1-size_asserts_false.json" \
  > "$C/inductor_options/resnet20-b1-size_asserts_false.md"
