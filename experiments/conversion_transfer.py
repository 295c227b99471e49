"""The transfer study (issue 33, item 4): given a BN-pretrained backbone and a new task to fine-tune
at 2 images per device, convert it to GN+PN, or keep FrozenBN?

1. teacher  A BN resnet20 trained on CIFAR-10 classes 0-4 (all 25k images, the 30-epoch
            ``--recipe cifar``, batch 128), through the public CLI; retrained when its checkpoint
            is missing (deterministic).
2. lr       The target task is classes 5-9. A class-balanced 2500 of its 25k training images are
            held out; the learning rate is chosen once, on them, from ``LR_GRID`` with the
            baseline condition (b) (choosing on the baseline favours it: conservative for (d)).
3. runs     Every condition fine-tunes on the other 22.5k images with the same schedule: batch 32
            as 16 devices x 2 images, SGD (momentum 0.9, weight decay 1e-4), cosine from the
            chosen lr to 0 over ``epochs`` epochs, CIFAR augmentation, channels_last, a fresh
            5-way head (the same initial head for every condition of a seed). Test accuracy on
            the 5000 test images of classes 5-9 after every epoch. Conditions:

            (a) BN with statistics over 2 images (each device's own; no SyncBN)
            (b) FrozenBN: running statistics fixed, affine learned (the detection default)
            (c) BN over all 32 (what SyncBN gives: the upper reference)
            (d) GN+PN (8 groups) converted from the teacher, calibrated and reconstructed block
                by block on 2048 unlabeled target training images (``proxynorm.convert`` +
                ``proxynorm.conversion.reconstruct``; no labels, no distillation)
            (e) GN+PN (8 groups) converted, uncalibrated
            (f) GN+PN (8 groups) from scratch, the same schedule

One JSON per lr probe and per (condition, seed) under ``--out``, skipped when it exists and written
as each finishes; each records the commit. ``python experiments/conversion_report.py`` then
writes the table and curves into docs/CONVERSION.md.

    python experiments/conversion_transfer.py              # ~2 h on one CPU thread
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from proxynorm import convert, create_model
from proxynorm.checkpoint import load_model
from proxynorm.conversion import reconstruct
from proxynorm.data import ArrayDataset, class_balanced_indices, load_small_images, normalize
from proxynorm.data.loader import ArrayLoader
from proxynorm.environment import environment
from proxynorm.layers import BatchNormStep
from proxynorm.train.metrics import accuracy

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "experiments" / "results" / "conversion" / "transfer"
DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg.zip"
SOURCE, TARGET = "0-4", [5, 6, 7, 8, 9]  # CIFAR-10 classes of the teacher and of the new task
TEACHER = ["--model", "resnet20", "--norm", "bn", "--data", "cifar10", "--recipe", "cifar",
           "--epochs", "30", "--classes", SOURCE, "--channels-last", "--batch-size", "128",
           "--seed", "0"]  # fmt: skip
SETTINGS = {
    "epochs": 4,  # fine-tuning epochs over the 22.5k target images, every condition
    "batch": 32,  # global batch: 16 devices x 2 images
    "per_device": 2,  # images per device: BN's statistics in (a)
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "held_out": 2500,  # target training images kept aside to choose the lr
    "calibrate": 2048,  # unlabeled target images for (d)'s calibration and reconstruction
    "reconstruct_steps": 800,  # per block, Adam at reconstruct_lr (docs/CONVERSION.md, kept study)
    "reconstruct_lr": 2e-3,
    "groups": 8,
}
LR_GRID = (0.01, 0.03, 0.1)
LR_CONDITION = "b"
CONDITIONS = {
    "a": "BN over 2",
    "b": "FrozenBN",
    "c": "BN over 32",
    "d": "GN+PN converted + reconstructed",
    "e": "GN+PN converted, uncalibrated",
    "f": "GN+PN from scratch",
}
TARGETS = (("d", "b"), ("d", "a"))  # issue 33: (d) >= (b) and (d) >= (a), final test accuracy


def train_teacher(data: Path, run: Path) -> Path:
    """The teacher's checkpoint, trained through the CLI when missing."""
    if not (run / "checkpoint.pt").exists() or not (run / "final.json").exists():
        for name in ("final.json", "metrics.jsonl"):  # committed results without the checkpoint
            if not (run / "checkpoint.pt").exists():
                (run / name).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "proxynorm.cli", "train", "--resume", "--out", str(run),
               "--data-dir", str(data), *TEACHER]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True)
    return run / "checkpoint.pt"


def prepare(images: torch.Tensor) -> torch.Tensor:
    return normalize(images).contiguous(memory_format=torch.channels_last)


def target_splits(train: ArrayDataset, test: ArrayDataset, held_out: int):
    """(fine-tuning images, held-out images, test images) of the target classes."""
    train, test = train.only_classes(TARGET), test.only_classes(TARGET)
    val = set(class_balanced_indices(train.labels.tolist(), held_out, 7))
    rest = [i for i in range(len(train)) if i not in val]
    return train.subset(rest), train.subset(sorted(val)), test


def batches(data: ArrayDataset, size: int = 500) -> list:
    return [(prepare(data.images[i : i + size]), data.labels[i : i + size])
            for i in range(0, len(data), size)]  # fmt: skip


def build(condition: str, teacher_ckpt: Path, cal: torch.Tensor, seed: int) -> tuple:
    """The model of ``condition`` with a fresh head (seeded), and what building it recorded."""
    info: dict = {}
    model = load_model(teacher_ckpt).eval()
    if condition == "f":  # the teacher's architecture, GN+PN, random init
        torch.manual_seed(seed)
        config = {k: v for k, v in model.config.items() if k != "norm_batch"}  # BN only
        model = create_model(**{**config, "norm": "gn+pn", "groups": SETTINGS["groups"]})
    if condition == "a":
        for m in model.modules():
            if isinstance(m, BatchNormStep):
                m.norm_batch = SETTINGS["per_device"]
    if condition in ("d", "e"):
        teacher, t0 = model, time.perf_counter()
        calibrate = list(cal.split(256)) if condition == "d" else None
        model, report = convert(teacher, "gn+pn", groups=SETTINGS["groups"], calibrate=calibrate)
        if condition == "d":
            rec = reconstruct(
                model,
                teacher,
                report.converted,
                cal,
                seed=seed,
                steps=SETTINGS["reconstruct_steps"],
                lr=SETTINGS["reconstruct_lr"],
            )
            info["blocks"] = [vars(b) for b in rec.blocks]
        info["conversion_seconds"] = time.perf_counter() - t0
    torch.manual_seed(seed)  # the same initial head for every condition of this seed
    model.fc = nn.Linear(model.fc.in_features, len(TARGET))
    return model.to(memory_format=torch.channels_last), info


def set_train_mode(model: nn.Module, condition: str) -> None:
    model.train()
    if condition == "b":  # running statistics fixed, affine still learned
        for m in model.modules():
            if isinstance(m, BatchNormStep):
                m.eval()


def finetune(model: nn.Module, condition: str, lr: float, train, evaluate, seed: int) -> dict:
    """Fine-tune ``model`` in place; ``evaluate`` (batches) is scored after every epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=SETTINGS["momentum"],
                          weight_decay=SETTINGS["weight_decay"])  # fmt: skip
    loader = ArrayLoader(train, SETTINGS["batch"], True, seed=seed + 1000, augment="cifar")
    total = SETTINGS["epochs"] * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    record: dict = {"train_acc": [], "eval_acc": [], "train_loss": []}
    t0 = time.perf_counter()
    for epoch in range(SETTINGS["epochs"]):
        loader.set_epoch(epoch)
        set_train_mode(model, condition)
        correct = count = 0
        loss_sum = 0.0
        for x, y in loader:
            logits = model(prepare(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
            loss_sum += float(loss.detach()) * len(y)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"condition {condition}, lr {lr}: the loss diverged")
        record["train_acc"].append(100.0 * correct / count)
        record["train_loss"].append(loss_sum / count)
        record["eval_acc"].append(accuracy(model, evaluate))
        print(f"  ({condition}) seed {seed} lr {lr} epoch {epoch + 1}: "
              f"eval {record['eval_acc'][-1]:.2f}%", flush=True)  # fmt: skip
    record["seconds"] = time.perf_counter() - t0
    return record


def choose_lr(out: Path, ckpt: Path, train, val, cal) -> float:
    """The lr of ``LR_GRID`` with the best held-out accuracy of condition ``LR_CONDITION``."""
    scores = {}
    for lr in LR_GRID:
        path = out / "lr" / f"{LR_CONDITION}-lr{lr}.json"
        if not path.exists():
            model, info = build(LR_CONDITION, ckpt, cal, 0)
            try:
                r = finetune(model, LR_CONDITION, lr, train, batches(val), 0)
            except FloatingPointError:  # JSON null: no accuracy to report
                r = {"eval_acc": None, "diverged": True}
            write(path, {"condition": LR_CONDITION, "lr": lr, "settings": SETTINGS, **info, **r})
        r = json.loads(path.read_text())
        scores[lr] = None if r.get("diverged") else r["eval_acc"][-1]
    finite = {lr: s for lr, s in scores.items() if s is not None}
    if not finite:
        raise SystemExit(f"every lr of {LR_GRID} diverged")
    return max(finite, key=finite.get)


def write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "environment": environment()}, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--teacher", type=Path, help="a finished BN run on the source classes "
                   "(default: OUT/teacher, trained when missing)")  # fmt: skip
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds (head, order, reconstruction)")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help="keys of CONDITIONS")
    p.add_argument("--epochs", type=int, default=SETTINGS["epochs"], help="fine-tuning epochs")
    args = p.parse_args(argv)
    unknown = set(args.conditions.split(",")) - set(CONDITIONS)
    if unknown:
        raise SystemExit(f"--conditions: unknown {sorted(unknown)}; choose from {list(CONDITIONS)}")
    SETTINGS["epochs"] = args.epochs
    ckpt = (
        args.teacher / "checkpoint.pt"
        if args.teacher
        else train_teacher(args.data_dir, args.out / "teacher")
    )
    train, test, _ = load_small_images("cifar10", args.data_dir)
    train, val, test = target_splits(train, test, SETTINGS["held_out"])
    cal = prepare(
        train.images[class_balanced_indices(train.labels.tolist(), SETTINGS["calibrate"], 1)]
    )
    lr = choose_lr(args.out, ckpt, train, val, cal)
    print(
        f"lr {lr} (chosen on {len(val)} held-out images with condition {LR_CONDITION})", flush=True
    )
    test_batches = batches(test)
    for seed in (int(s) for s in args.seeds.split(",")):
        for c in args.conditions.split(","):
            path = args.out / "runs" / f"{c}-seed{seed}.json"
            if path.exists():
                continue
            model, info = build(c, ckpt, cal, seed)
            r = finetune(model, c, lr, train, test_batches, seed)
            r["test_acc"] = r.pop("eval_acc")
            write(path, {"condition": c, "label": CONDITIONS[c], "seed": seed, "lr": lr,
                         "settings": SETTINGS, **info, **r})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
