"""``benchmarks/compiled_layer_cost.py`` with one more variant, "GN+PN packed state": the
compiled backward of GN+PN (ReLU's closed form) reading everything it needs of the proxy and the
parameters from one (10, C) float64 tensor that the forward packs (``packed_state.diff``), against
the shipped layout, in the same process. Not part of the package: the measurement behind
docs/PERFORMANCE.md's "One saved tensor for the backward's proxy state". From the repository root:

    git apply benchmarks/results/compiled_cost/packed_state/packed_state.diff
    OMP_NUM_THREADS=2 python benchmarks/results/compiled_cost/packed_state/bench_packed.py \\
        --variants "GN+PN,GN+PN packed state" --rounds 300 [--model resnet20-b1] --json out.json
    git apply -R benchmarks/results/compiled_cost/packed_state/packed_state.diff
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/

import compiled_layer_cost as clc  # noqa: E402

if not hasattr(clc.fpn, "_packed"):
    sys.exit("apply packed_state.diff first (see the docstring)")
# Both read while dynamo traces, so each variant compiles its own graph.
clc.fpn._packed = lambda: clc._PATH["now"] == "packed"
clc.fpn._closed_form = lambda act: (
    clc._PATH["now"] in ("closed", "packed") and clc._CLOSED_FORM(act)
)
clc.VARIANTS["GN+PN packed state"] = ("gn+pn", {}, clc._as_built, "packed")
clc.main()
