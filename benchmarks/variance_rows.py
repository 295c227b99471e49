"""Why the fused PN computes its proxy variance in two passes, not with ``torch.var_mean``.

    python benchmarks/variance_rows.py > benchmarks/results/variance_rows.md

1. Per-row population mean and variance of a (C, 256) float32 tensor (PN's proxy values, one
   row per channel), forward only (the fused Function has its own backward).
2. Weight standardization: ``WSConv2d.standardized_weight`` (two passes) against the same
   written with ``torch.var_mean``, forward and backward through autograd.

Median over the calls after warm-up, in microseconds.
"""

import statistics
import time

import torch

from proxynorm.layers.ws_conv import WSConv2d


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


def ws_var_mean(w: torch.Tensor) -> torch.Tensor:
    """``WSConv2d.standardized_weight`` (eps 0) written with ``torch.var_mean``."""
    var, mean = torch.var_mean(w, dim=(1, 2, 3), correction=0, keepdim=True)
    return (w - mean) * torch.rsqrt(var.clamp_min(1e-12))


def main_ws() -> None:
    """The library's two-pass ``WSConv2d.standardized_weight`` against ``ws_var_mean``."""
    print("\n| weight | var_mean fwd+bwd (µs) | two-pass fwd+bwd (µs) | ratio |\n|---|---|---|---|")
    for cout, cin, k in ((16, 16, 3), (64, 64, 3), (256, 64, 1), (256, 256, 3)):
        conv = WSConv2d(cin, cout, k)
        w, g = conv.weight, torch.randn_like(conv.weight)
        torch.testing.assert_close(conv.standardized_weight(), ws_var_mean(w))
        a = _median_us(lambda w=w, g=g: torch.autograd.grad(ws_var_mean(w), w, g), calls=500)
        b = _median_us(
            lambda c=conv, g=g: torch.autograd.grad(c.standardized_weight(), c.weight, g),
            calls=500,
        )
        print(f"| {'×'.join(map(str, w.shape))} | {a:.0f} | {b:.0f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
    main_ws()
