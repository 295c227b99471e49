"""Training-step time of converted models against their BN originals (issue 15), on CPU.

For each model: one training step (forward, cross entropy, backward, SGD step) of the BN original
and of `proxynorm.convert(model, "gn+pn", groups=8)`, timed in interleaved rounds (median after
warm-up, ratio within each round), plus the saved-for-backward memory of each. Models: MobileNet-
style nets written here (ReLU6, Hardswish, LeakyReLU; they always run) and, when torchvision is
installed, mobilenet_v2 (ReLU6), mobilenet_v3_small (Hardswish), resnet18, efficientnet_b0.

    OMP_NUM_THREADS=1 python benchmarks/convert_step.py --out benchmarks/results/convert_step
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from proxynorm import convert
from proxynorm.bench import median_ratio, saved_bytes
from proxynorm.environment import environment


def inverted_residual_net(act: nn.Module, width: int = 32, blocks: int = 6) -> nn.Module:
    """MobileNetV2-style: stem, inverted residual blocks (expand 1x1, depthwise 3x3, project)."""

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            e = 4 * c
            self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), act)
            self.dw = nn.Sequential(
                nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), act
            )
            self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.project(self.dw(self.expand(x)))

    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), act,
        *[Block(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )  # fmt: skip


def models(size: int):
    yield "inverted residual, ReLU6", inverted_residual_net(nn.ReLU6()), 64
    yield "inverted residual, Hardswish", inverted_residual_net(nn.Hardswish()), 64
    yield "inverted residual, LeakyReLU(0.1)", inverted_residual_net(nn.LeakyReLU(0.1)), 64
    try:
        import torchvision.models as tv
    except Exception:  # noqa: BLE001 (absent, or not loadable beside this torch)
        return
    for name in ("mobilenet_v2", "mobilenet_v3_small", "resnet18", "efficientnet_b0"):
        yield f"torchvision {name}", getattr(tv, name)(num_classes=10), size


def saved_mib(model: nn.Module, x, y) -> float:
    return saved_bytes(lambda: F.cross_entropy(model(x), y)) / 2**20


def step_fn(model: nn.Module, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="image size of the torchvision models")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", default="benchmarks/results/convert_step")
    args = p.parse_args(argv)
    rows = []
    for name, model, size in models(args.size):
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, size, size)
        y = torch.randint(0, 10, (args.batch,))
        model.train()
        converted, report = convert(model, "gn+pn", groups=8)
        converted.train()
        steps = {"bn": step_fn(model, x, y), "gn+pn": step_fn(converted, x, y)}
        for s in steps.values():
            for _ in range(3):
                s()
        times = {k: [] for k in steps}
        for _ in range(args.repeats):
            for k, s in steps.items():
                t0 = time.perf_counter()
                s()
                times[k].append(time.perf_counter() - t0)
        ratio = median_ratio(times["gn+pn"], times["bn"])
        pns = [m for m in converted.modules() if type(m).__name__ == "ProxyNormAct"]
        row = {
            "model": name,
            "bn_ms": statistics.median(times["bn"]) * 1e3,
            "gn_pn_ms": statistics.median(times["gn+pn"]) * 1e3,
            "ratio": ratio,
            "bn_saved_mib": saved_mib(model, x, y),
            "gn_pn_saved_mib": saved_mib(converted, x, y),
            "pn_layers": len(pns),
            "fused": sum(p.uses_fused for p in pns),
            "acts": sorted({p.act_name for p in pns}),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"environment": environment(), "batch": args.batch, "rows": rows}
    (out / "convert_step.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"# Converted models: training step against the BN original (batch {args.batch}, "
        f"{result['environment']['threads']} thread(s))",
        "",
        "| model | activations | PN layers (fused) | BN ms | GN+PN ms | × BN "
        "| saved MiB BN → GN+PN |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {', '.join(r['acts'])} | {r['pn_layers']} ({r['fused']}) | "
            f"{r['bn_ms']:.1f} | {r['gn_pn_ms']:.1f} | {r['ratio']:.2f} | "
            f"{r['bn_saved_mib']:.1f} → {r['gn_pn_saved_mib']:.1f} |"
        )
    (out / "convert_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
