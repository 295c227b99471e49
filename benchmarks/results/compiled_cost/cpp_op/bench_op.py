"""``benchmarks/compiled_layer_cost.py`` with one more variant, "GN+PN C++ op": every GN+PN layer
computed by the C++ kernel registered as ops in C++ (``proto.py``), compiled, against the shipped
compiled Python path, in the same process. First prints the prototype's float64 differences to
the Python path. Not part of the package: the measurement behind docs/PERFORMANCE.md's "Tried
and dropped: the C++ kernel as C++-registered ops". From the repository root:

    OMP_NUM_THREADS=2 python benchmarks/results/compiled_cost/cpp_op/bench_op.py \\
        --variants "GN+PN,GN+PN C++ op" --json stack.json
"""

import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path[:0] = [str(here), str(here.parents[2])]  # proto.py, benchmarks/

import compiled_layer_cost as clc  # noqa: E402
import proto  # noqa: E402

proto.build()
errors = proto.check()
print("float64, largest difference to the Python path (values, gradients): "
      + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) + "\n")  # fmt: skip
assert max(errors.values()) < 1e-10, errors
clc.VARIANTS["GN+PN C++ op"] = ("gn+pn", {}, proto.wrap, "closed")
clc.main()
