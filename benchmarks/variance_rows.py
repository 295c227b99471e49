"""Why the fused PN computes its proxy variance in two passes, not with ``torch.var_mean``.

    python benchmarks/variance_rows.py > benchmarks/results/variance_rows.md

1. Per-row population mean and variance of a (C, 256) float32 tensor (PN's proxy values, one
   row per channel), forward only (the fused Function has its own backward).
2. Weight standardization (``WSConv2d``): standardize a conv weight per output channel, forward
   and backward through autograd.

Median over the calls after warm-up, in microseconds.
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


def ws_var_mean(w: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(w, dim=(1, 2, 3), correction=0, keepdim=True)
    return (w - mean) * torch.rsqrt(var.clamp_min(1e-10))


def ws_two_pass(w: torch.Tensor) -> torch.Tensor:
    centered = w - w.mean(dim=(1, 2, 3), keepdim=True)
    var = (centered * centered).mean(dim=(1, 2, 3), keepdim=True)
    return centered * torch.rsqrt(var.clamp_min(1e-10))


def main_ws() -> None:
    print("\n| weight | var_mean fwd+bwd (µs) | two-pass fwd+bwd (µs) | ratio |\n|---|---|---|---|")
    for shape in ((16, 16, 3, 3), (64, 64, 3, 3), (256, 64, 1, 1), (256, 256, 3, 3)):
        w = torch.randn(shape, requires_grad=True)
        g = torch.randn(shape)
        a = _median_us(lambda w=w, g=g: torch.autograd.grad(ws_var_mean(w), w, g), calls=500)
        b = _median_us(lambda w=w, g=g: torch.autograd.grad(ws_two_pass(w), w, g), calls=500)
        print(f"| {'×'.join(map(str, shape))} | {a:.0f} | {b:.0f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
    main_ws()
