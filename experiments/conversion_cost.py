"""What conversion costs as models get deeper (issue 33, item 3): wall time and peak memory of the
closed-form calibration and of block reconstruction, on resnet20/56/110 (CIFAR, 32x32) and a
torchvision-style ResNet-50 at 224x224.

    python experiments/conversion_cost.py [--models resnet20,resnet56,resnet110,resnet50-224]
        [--images 2048] [--r50-images 256] [--steps 200] [--threads 2] [--out DIR]

Each model is measured in its own process (so that its peak resident memory is its own): BN
statistics are first gathered on CIFAR-10 training images (train-mode passes; for the ResNet-50
the images are resized to 224x224), then ``convert(..., calibrate=...)`` (the closed form) and
``reconstruct`` are timed apart, with the convolution calls per calibration image counted (the
linear cost, in forward passes). One JSON per model under ``--out`` (default
experiments/results/conversion/cost/). Time it on an otherwise idle machine (pause background
runs and say so).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg.zip"
TARGETS_S = {"resnet20": 180.0, "resnet50-224": 1200.0}  # issue 33: 2 threads, these images
TARGET_GIB = {"resnet50-224": 4.0}


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block (v1.5: stride on the 3x3)."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        out = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))  # fmt: skip

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 layout: 7x7 stem, max pool, [3, 4, 6, 3] bottlenecks."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, c = [], width
        for i, n in enumerate((3, 4, 6, 3)):
            w = width * 2**i
            blocks = [Bottleneck(c if j == 0 else 4 * w, w, 2 if (j == 0 and i) else 1)
                      for j in range(n)]  # fmt: skip
            layers.append(nn.Sequential(*blocks))
            c = 4 * w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(name: str, width: int = 64) -> tuple[nn.Module, int]:
    """The BN model and its input size."""
    if name == "resnet50-224":
        return ResNet50(width=width), 224
    from proxynorm.models import create_model

    return create_model(name, norm="bn"), 32


def images(n: int, size: int, data: Path) -> torch.Tensor:
    """``n`` class-balanced CIFAR-10 training images, normalized, at ``size`` (synthetic when
    the data is absent: the smoke test)."""
    if not data.exists():
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    from proxynorm.data import class_balanced_indices, load_small_images, normalize

    train, _, _ = load_small_images("cifar10", data)
    x = normalize(train.images[class_balanced_indices(train.labels.tolist(), n, 7)])
    return F.interpolate(x, size=size, mode="bilinear") if size != x.shape[-1] else x


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(name: str, n: int, steps: int, data: Path, width: int) -> dict:
    from proxynorm import convert
    from proxynorm.conversion import reconstruct
    from proxynorm.environment import environment

    torch.manual_seed(0)
    bn, size = build(name, width)
    x = images(n, size, data)
    with torch.no_grad():  # BN statistics gathered on data
        bn.train()
        for chunk in x.split(32):
            bn(chunk)
    bn.eval()
    calls = {"n": 0}
    for m in bn.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    convs = sum(isinstance(m, nn.Conv2d) for m in bn.modules())
    before = peak_gib()
    t0 = time.perf_counter()
    model, report = convert(bn, "gn+pn", groups=8, calibrate=list(x.split(64)))
    closed = time.perf_counter() - t0
    peak_closed = peak_gib()
    teacher_calls = calls["n"]
    t0 = time.perf_counter()
    rec = reconstruct(model, bn, report.converted, x, steps=steps)
    recon = time.perf_counter() - t0
    return {"model": name, "images": n, "size": size, "steps": steps, "width": width,
            "threads": torch.get_num_threads(), "convs": convs, "layers": len(report.converted),
            "closed_form_seconds": closed, "reconstruct_seconds": recon,
            "teacher_conv_calls_per_conv_per_chunk": teacher_calls / convs / len(x.split(64)),
            "peak_gib_before": before, "peak_gib_closed_form": peak_closed,
            "peak_gib": peak_gib(),
            "blocks": len(rec.blocks), "environment": environment()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet56,resnet110,resnet50-224")
    p.add_argument("--images", type=int, default=2048, help="calibration images (CIFAR models)")
    p.add_argument("--r50-images", type=int, default=256, help="calibration images, ResNet-50")
    p.add_argument("--steps", type=int, default=200, help="reconstruction steps per block")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=int, default=64, help="ResNet-50 stem width (tests: small)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/conversion/cost")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one model
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        n = args.r50_images if args.one == "resnet50-224" else args.images
        result = measure(args.one, n, args.steps, args.data, args.width)
        print(json.dumps(result))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        rest = sys.argv[1:] if argv is None else argv
        cmd = [sys.executable, __file__, "--one", name, *rest]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(f"{name}: closed form {result['closed_form_seconds']:.0f} s, reconstruction "
              f"{result['reconstruct_seconds']:.0f} s, peak {result['peak_gib']:.2f} GiB",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
