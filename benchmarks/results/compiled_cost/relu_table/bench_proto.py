"""``benchmarks/compiled_layer_cost.py`` with one more variant, "GN+PN proto": ReLU's closed form
under compile with the count from Φ and the sums from prefix tables (``proto.py``), against the
shipped counting pass, in the same process. Not part of the package: the measurement behind
docs/PERFORMANCE.md's "Tried and dropped: no C × n pass at all". From the repository root:

    OMP_NUM_THREADS=2 python benchmarks/results/compiled_cost/relu_table/bench_proto.py \\
        --variants "GN+PN,GN+PN proto" --rounds 200 --json stack.json
"""

import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path[:0] = [str(here), str(here.parents[2])]  # proto.py, benchmarks/

import compiled_layer_cost as clc  # noqa: E402
import proto  # noqa: E402  (builds its tables before anything is compiled)
import proxynorm.layers.fused_proxy_norm as fpn  # noqa: E402

_shipped_sums, _shipped_closed = clc.fpn._relu_sums, clc._CLOSED_FORM


def _relu_sums(a, b, q):
    return proto.sums(a, b, q) if clc._PATH["now"] == "proto" else _shipped_sums(a, b, q)


def _closed_form(act):
    return clc._PATH["now"] in ("closed", "proto") and _shipped_closed(act)


fpn._relu_sums = _relu_sums
fpn._closed_form = clc._closed_form = _closed_form
clc.VARIANTS["GN+PN proto"] = ("gn+pn", {}, clc._as_built, "proto")
clc.main()
