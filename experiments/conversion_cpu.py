"""From a BN-pretrained resnet20 to GN+PN without losing what it learned (issue 17), on CPU.

1. base   Train a BN resnet20 once, at the CIFAR-10 (JPEG) CPU protocol of docs/RESULTS.md
          (class-balanced 10k subset, 20 epochs, batch 128, BN over 128, channels_last), through
          the public CLI (`proxynorm train`; deterministic, so a missing checkpoint is retrained).
2. convert  Convert it (gn+pn with 8, 4 and 2 groups, ln+pn, gn), uncalibrated and calibrated on
          `--calibrate` training images (`proxynorm.convert(..., calibrate=...)`), and evaluate
          each on the 10k test images before any fine-tuning.
3. finetune  Fine-tune for 3 epochs at 4 images per device (batch 32 = 8 devices x 4; SGD,
          momentum 0.9, weight decay 1e-4, constant lr 0.0025, CIFAR augmentation) on the same
          10k images, test accuracy after every epoch, seeds 0 and 1, for: BN fine-tuned with its
          statistics over 4 images (ghost batches), frozen BN (running statistics fixed), GN+PN
          converted and calibrated, GN+PN converted without calibration.

Each step writes JSON under experiments/results/conversion/ and is skipped when its JSON exists
(delete it to rerun; convert.json is extended with conversions it lacks). Then
`python experiments/conversion_report.py` writes docs/CONVERSION.md.

    python experiments/conversion_cpu.py            # all steps (~2 h on one CPU thread)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results" / "conversion"
DATA = "../shared/data/cifar10-jpeg.zip"
BASE = ["--model", "resnet20", "--norm", "bn", "--data", "cifar10", "--recipe", "cifar",
        "--subset", "10000", "--epochs", "20", "--channels-last", "--batch-size", "128",
        "--seed", "0"]  # fmt: skip
CONVERSIONS = {  # name -> (spec, groups); "gn+pn" (8 groups) is the one fine-tuned below
    "gn+pn": ("gn+pn", 8),
    "ln+pn": ("ln+pn", None),
    "gn": ("gn", 8),
    "gn+pn (4 groups)": ("gn+pn", 4),  # how the kept accuracy depends on the group count
    "gn+pn (2 groups)": ("gn+pn", 2),
}
FINETUNE = {"epochs": 3, "batch": 32, "per_device": 4, "lr": 0.0025, "momentum": 0.9,
            "weight_decay": 1e-4}  # fmt: skip
CONDITIONS = ("bn (statistics over 4)", "frozen bn", "gn+pn calibrated", "gn+pn uncalibrated")


def train_base(data: str) -> Path:
    run = OUT / "base_bn"
    if not (run / "checkpoint.pt").exists() or not (run / "final.json").exists():
        if (run / "final.json").exists():  # committed results without the checkpoint
            (run / "final.json").unlink()
            (run / "metrics.jsonl").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "proxynorm.cli", "train", "--resume", "--out", str(run),
               "--data-dir", data, *BASE]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)
    return run / "checkpoint.pt"


def load_data(data: str, calibrate: int):
    from proxynorm.data import class_balanced_indices, load_small_images

    train, test, _ = load_small_images("cifar10", ROOT / data)
    train = train.subset(class_balanced_indices(train.labels.tolist(), 10000, 0))
    # Calibration images: class balanced from the training subset, no augmentation.
    cal = train.images[class_balanced_indices(train.labels.tolist(), calibrate, 1)]
    return train, test, cal


def prepare(images: torch.Tensor) -> torch.Tensor:
    from proxynorm.data import normalize

    return normalize(images).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model: nn.Module, test) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(test), 500):
        x = prepare(test.images[i : i + 500])
        correct += int((model(x).argmax(1) == test.labels[i : i + 500]).sum())
    return 100.0 * correct / len(test)


def convert_step(ckpt: Path, train, test, cal) -> dict:
    from proxynorm import convert
    from proxynorm.checkpoint import load_model

    path = OUT / "convert.json"
    bn = load_model(ckpt).eval()
    if path.exists():
        result = json.loads(path.read_text())
        if result["calibration_images"] != len(cal):
            raise SystemExit(f"{path} was calibrated on {result['calibration_images']} images, "
                             f"not --calibrate {len(cal)}: delete it to rerun")  # fmt: skip
    else:
        result = {"bn": accuracy(bn, test), "calibration_images": len(cal), "conversions": {}}
    print(f"BN model: {result['bn']:.2f}%", flush=True)
    batches = list(prepare(cal).split(256))
    for name, (spec, groups) in CONVERSIONS.items():
        if name in result["conversions"]:
            continue
        kw = {"groups": groups} if groups else {}
        plain, _ = convert(bn, spec, **kw)
        t0 = time.perf_counter()
        calibrated, report = convert(bn, spec, calibrate=batches, **kw)
        seconds = time.perf_counter() - t0
        result["conversions"][name] = {
            "uncalibrated": accuracy(plain, test),
            "calibrated": accuracy(calibrated, test),
            "calibration_seconds": seconds,
            "layers": [vars(f) for f in report.calibration.layers],
            "consumers": [vars(c) for c in report.calibration.consumers],
        }
        r = result["conversions"][name]
        print(f"{name}: uncalibrated {r['uncalibrated']:.2f}%, calibrated {r['calibrated']:.2f}% "
              f"({seconds:.0f} s)", flush=True)  # fmt: skip
        path.write_text(json.dumps(result, indent=1))  # after each: nothing lost if stopped
    return result


def finetune_model(condition: str, ckpt: Path, cal) -> nn.Module:
    from proxynorm import convert
    from proxynorm.checkpoint import load_model
    from proxynorm.layers import BatchNormStep

    bn = load_model(ckpt)
    if condition.startswith("bn"):
        for m in bn.modules():
            if isinstance(m, BatchNormStep):
                m.norm_batch = FINETUNE["per_device"]
        return bn
    if condition == "frozen bn":
        return bn
    batches = list(prepare(cal).split(256)) if "uncalibrated" not in condition else None
    model, _ = convert(bn.eval(), "gn+pn", groups=8, calibrate=batches)
    return model


def set_train_mode(model: nn.Module, condition: str) -> None:
    from proxynorm.layers import BatchNormStep

    model.train()
    if condition == "frozen bn":  # running statistics fixed, affine still learned
        for m in model.modules():
            if isinstance(m, BatchNormStep):
                m.eval()


def finetune_run(condition: str, seed: int, ckpt: Path, train, test, cal) -> dict:
    from proxynorm.data.loader import ArrayLoader

    torch.manual_seed(seed)
    model = finetune_model(condition, ckpt, cal).to(memory_format=torch.channels_last)
    record = {"condition": condition, "seed": seed, "settings": FINETUNE,
              "test_acc": [accuracy(model, test)], "train_acc": [None]}  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=FINETUNE["lr"], momentum=FINETUNE["momentum"],
                          weight_decay=FINETUNE["weight_decay"])  # fmt: skip
    loader = ArrayLoader(train, FINETUNE["batch"], True, seed=seed + 1000, augment="cifar")
    t0 = time.perf_counter()
    for epoch in range(FINETUNE["epochs"]):
        loader.set_epoch(epoch)
        set_train_mode(model, condition)
        correct = count = 0
        for x, y in loader:
            logits = model(prepare(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
        record["train_acc"].append(100.0 * correct / count)
        record["test_acc"].append(accuracy(model, test))
        print(f"  {condition} seed {seed} epoch {epoch + 1}: test {record['test_acc'][-1]:.2f}%",
              flush=True)  # fmt: skip
    record["seconds"] = time.perf_counter() - t0
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--calibrate", type=int, default=2048, help="calibration images")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", default="base,convert,finetune")
    args = p.parse_args(argv)
    steps = set(args.steps.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = train_base(args.data_dir)
    if not steps & {"convert", "finetune"}:
        return 0
    train, test, cal = load_data(args.data_dir, args.calibrate)
    if "convert" in steps:
        convert_step(ckpt, train, test, cal)
    if "finetune" in steps:
        for seed in range(args.seeds):
            for condition in CONDITIONS:
                path = OUT / "finetune" / f"{condition.replace(' ', '_')}-seed{seed}.json"
                if path.exists():
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                record = finetune_run(condition, seed, ckpt, train, test, cal)
                path.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
