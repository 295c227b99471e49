"""Why the fused PN computes its proxy variance in two passes, not with ``torch.var_mean``.

    python benchmarks/variance_rows.py > benchmarks/results/variance_rows.md

Per-row population mean and variance of a (C, 256) float32 tensor (PN's proxy values, one row
per channel): median over 2000 calls after warm-up, in microseconds.
"""

import statistics
import time

import torch


def _median_us(fn, calls: int = 2000, warmup: int = 200) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def two_pass(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(1)
    centered = z - mean.unsqueeze(1)
    return (centered * centered).mean(1), mean


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| C × n | torch.var_mean (µs) | two-pass (µs) | ratio |\n|---|---|---|---|")
    for c in (16, 32, 64, 256, 512):
        z = torch.randn(c, 256)
        torch.testing.assert_close(two_pass(z), torch.var_mean(z, dim=1, correction=0))
        a = _median_us(lambda z=z: torch.var_mean(z, dim=1, correction=0))
        b = _median_us(lambda z=z: two_pass(z))
        print(f"| {c} × 256 | {a:.1f} | {b:.1f} | {a / b:.1f} |")


if __name__ == "__main__":
    main()
