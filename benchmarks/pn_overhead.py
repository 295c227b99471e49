"""PN's fixed per-layer cost: forward + backward of one GN+ReLU and one GN+PN layer on small inputs,
where the work that does not depend on the batch dominates. Median over interleaved calls.

    OMP_NUM_THREADS=1 python benchmarks/pn_overhead.py                  # Python fused path
    OMP_NUM_THREADS=1 PROXYNORM_CPP=1 python benchmarks/pn_overhead.py  # opt-in C++ kernel
    OMP_NUM_THREADS=1 python benchmarks/pn_overhead.py --compile --n-samples 2,256,2048

``--compile`` times both layers under ``torch.compile`` (inductor); ``--n-samples`` sets PN's
number of proxy quantiles (the paper's 256 by default), which separates the part of the cost that
grows with the C × n proxy values from the part that does not.
"""

import argparse
import statistics
import time

import torch

from proxynorm.layers import norm_act

SHAPES = ((1, 8, 2, 2), (2, 64, 8, 8), (8, 16, 32, 32), (8, 64, 8, 8))


def _step(layer: torch.nn.Module, compiled: bool):
    fn = torch.compile(lambda x: layer(x).sum()) if compiled else (lambda x: layer(x).sum())
    return lambda x: fn(x).backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compile", action="store_true", help="time both layers under torch.compile")
    p.add_argument("--n-samples", default="256", help="comma-separated numbers of quantiles")
    p.add_argument("--calls", type=int, default=500, help="timed calls per layer")
    args = p.parse_args()
    ns = [int(n) for n in args.n_samples.split(",")]
    col = "n | " if len(ns) > 1 else ""
    print(f"| input | {col}GN+ReLU µs | GN+PN µs | GN+PN − GN+ReLU µs |")
    print("|---|---|---|---|" + ("---|" if col else ""))
    for shape in SHAPES:
        for n in ns:
            if args.compile:  # fresh caches: past configurations would hit dynamo's recompile
                torch._dynamo.reset()  # limit and silently fall back to eager
            x = torch.randn(*shape).requires_grad_()
            groups = 8 if shape[1] >= 8 else 1
            steps = {
                "gn": _step(norm_act("gn", shape[1], groups=groups), args.compile),
                "gn+pn": _step(
                    norm_act("gn+pn", shape[1], groups=groups, n_samples=n), args.compile
                ),
            }
            for step in steps.values():
                for _ in range(50):
                    step(x)
            times = {k: [] for k in steps}
            for _ in range(args.calls):
                for k, step in steps.items():
                    t0 = time.perf_counter()
                    step(x)
                    times[k].append(time.perf_counter() - t0)
            gn, pn = (statistics.median(times[k]) * 1e6 for k in ("gn", "gn+pn"))
            cell = f"{n} | " if col else ""
            print(f"| {tuple(shape)} | {cell}{gn:.0f} | {pn:.0f} | {pn - gn:.0f} |", flush=True)


if __name__ == "__main__":
    main()
