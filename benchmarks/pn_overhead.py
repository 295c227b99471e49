"""PN's fixed per-layer cost: forward + backward of one GN+ReLU and one GN+PN layer on small inputs,
where the work that does not depend on the batch dominates. Median over interleaved calls.

    OMP_NUM_THREADS=1 python benchmarks/pn_overhead.py                  # Python fused path
    OMP_NUM_THREADS=1 PROXYNORM_CPP=1 python benchmarks/pn_overhead.py  # opt-in C++ kernel
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxynorm.layers import norm_act  # noqa: E402


def main() -> None:
    print("| input | GN+ReLU µs | GN+PN µs | GN+PN − GN+ReLU µs |")
    print("|---|---|---|---|")
    for shape in ((1, 8, 2, 2), (2, 64, 8, 8), (8, 16, 32, 32), (8, 64, 8, 8)):
        x = torch.randn(*shape).requires_grad_()
        layers = {
            k: norm_act(k, shape[1], groups=8 if shape[1] >= 8 else 1) for k in ("gn", "gn+pn")
        }
        for layer in layers.values():
            for _ in range(50):
                layer(x).sum().backward()
        times = {k: [] for k in layers}
        for _ in range(500):
            for k, layer in layers.items():
                t0 = time.perf_counter()
                layer(x).sum().backward()
                times[k].append(time.perf_counter() - t0)
        gn, pn = (statistics.median(times[k]) * 1e6 for k in ("gn", "gn+pn"))
        print(f"| {tuple(shape)} | {gn:.0f} | {pn:.0f} | {pn - gn:.0f} |")


if __name__ == "__main__":
    main()
