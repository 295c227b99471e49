"""PyTorch's native GroupNorm kernels (what GN and the fused GN+PN run) in both memory formats.

    python benchmarks/group_norm_layouts.py > benchmarks/results/group_norm_layouts.md

Median ms of 20 calls after warm-up, float32, at the resnet20 (batch 128) and resnet50 (batch 16,
128x128) shapes that the training-step benchmark uses.
"""

import statistics
import time

import torch

SHAPES = [  # (N, C, H, W, groups)
    (128, 16, 32, 32, 8),
    (128, 32, 16, 16, 8),
    (128, 64, 8, 8, 8),
    (16, 64, 32, 32, 32),
    (16, 256, 32, 32, 32),
    (16, 512, 16, 16, 32),
]


def median_ms(fn, runs=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| N, C, H, W, groups | forward NCHW | forward NHWC | backward NCHW | backward NHWC |")
    print("|---|---|---|---|---|")
    for n, c, h, w, g in SHAPES:
        row = []
        for kind in ("forward", "backward"):
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
                grad = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
                weight = torch.randn(c)
                _, mean, rstd = torch.ops.aten.native_group_norm(
                    x, weight, weight, n, c, h * w, g, 1e-5
                )
                args = (n, c, h * w, g)
                if kind == "forward":

                    def fn(x=x, weight=weight, args=args):
                        return torch.ops.aten.native_group_norm(x, weight, weight, *args, 1e-5)
                else:

                    def fn(x=x, grad=grad, mean=mean, rstd=rstd, weight=weight, args=args):
                        return torch.ops.aten.native_group_norm_backward(
                            grad, x, mean, rstd, weight, *args, [True, True, True]
                        )

                row.append(f"{median_ms(fn):.2f}")
        print(f"| {n}, {c}, {h}, {w}, {g} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
