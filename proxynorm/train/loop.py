"""The training loop: read top to bottom, one epoch at a time, resumable bit for bit on CPU.

Labatie et al., NeurIPS 2021, Appendix A.1 recipes (``SPEC.md`` §6), via ``train.config``.
Per epoch: train (optional mixed precision, gradient clipping, Mixup/CutMix, weight EMA), evaluate,
optionally decompose the power of a fixed probe batch at every norm-act step, then write an atomic
checkpoint and one JSONL record. Shuffling and augmentation depend only on (seed, epoch) and the
global RNG state is checkpointed, so ``resume=True`` reproduces an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from proxynorm.analysis import TERM_NAMES, power_decomposition, record_preactivations
from proxynorm.data import class_balanced_indices, load_small_images, mix_batch, normalize
from proxynorm.data.datasets import is_image_folder
from proxynorm.data.image_folder import ImageFolder
from proxynorm.data.loader import ArrayLoader, FolderDataset, FolderLoader, epoch_generator
from proxynorm.data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from proxynorm.layers import parse_spec
from proxynorm.models import create_model, load_checkpoint, save_model
from proxynorm.train.config import TrainConfig
from proxynorm.train.metrics import append_jsonl, read_jsonl, truncate_jsonl
from proxynorm.train.optim import ModelEMA, build_optimizer, lr_at

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FINAL = "final.json"
# Options that may differ when resuming: they do not change the computation's result on CPU.
_RESUMABLE_DIFFERENCES = {"device", "workers", "download", "data_dir"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Data:
    train: ArrayLoader | FolderLoader
    test: ArrayLoader | FolderLoader
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    probe: Tensor | None  # uint8 images, fixed across epochs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is float16/bfloat16 on CUDA and off on CPU (bf16 is slower than
    float32 on most CPUs); norm and PN statistics stay float32 inside the layers."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type == "cpu"):
        return None
    if cfg.amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.amp in ("bf16", "fp16"):
        return torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    raise ValueError(f"amp must be auto, off, bf16 or fp16, got {cfg.amp!r}")


def build_data(cfg: TrainConfig) -> Data:
    """Loaders for the configured data set (CIFAR in memory, other image folders streamed)."""
    if cfg.data in ("cifar10", "cifar100"):
        train, test, num_classes = load_small_images(
            cfg.data, cfg.data_dir, cfg.download, size=cfg.image_size
        )
        if cfg.subset:
            if cfg.subset > len(train):
                raise ValueError(f"subset={cfg.subset} exceeds the {len(train)} training images")
            # The subset depends on the data only (not on the seed): seeds vary init and order.
            train = train.subset(class_balanced_indices(train.labels.tolist(), cfg.subset, 0))
        probe = None
        if cfg.probe:
            probe = test.images[class_balanced_indices(test.labels.tolist(), cfg.probe, 0)]
        return Data(
            ArrayLoader(train, cfg.batch_size, True, cfg.seed, cfg.augment),
            ArrayLoader(test, cfg.batch_size, False),
            num_classes,
            CIFAR_MEAN,
            CIFAR_STD,
            probe,
        )
    if cfg.data == "imagefolder":
        if not is_image_folder(cfg.data_dir):
            raise ValueError(f"data_dir {cfg.data_dir} is not an image folder (train/<class>/...)")
        train_f = ImageFolder(cfg.data_dir, "train")
        test_f = ImageFolder(cfg.data_dir, "val" if Path(cfg.data_dir, "val").exists() else "test")
        if cfg.subset:
            raise ValueError("subset is supported for cifar10/cifar100 only")
        train = FolderDataset(train_f, cfg.image_size, True, cfg.seed)
        test = FolderDataset(test_f, cfg.image_size, False, cfg.seed)
        probe = None
        if cfg.probe:
            probe = torch.stack([test[i][0] for i in range(min(cfg.probe, len(test)))])
        return Data(
            FolderLoader(train, cfg.batch_size, cfg.workers),
            FolderLoader(test, cfg.batch_size, cfg.workers),
            len(train_f.classes),
            IMAGENET_MEAN,
            IMAGENET_STD,
            probe,
        )
    raise ValueError(f"unknown data {cfg.data!r}; valid: cifar10, cifar100, imagefolder")


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model of ``cfg``: norm options go only to the norms they concern."""
    spec = parse_spec(cfg.norm)
    kwargs: dict[str, Any] = {"width_mult": cfg.width_mult}
    if spec.base in ("gn", "evos0"):
        kwargs["groups"] = cfg.groups
    if spec.base == "bn" and cfg.norm_batch:
        kwargs["norm_batch"] = cfg.norm_batch
    if cfg.model == "random_net":
        raise ValueError("random_net has no classifier; train a ResNet or EfficientNet")
    return create_model(
        cfg.model,
        norm=spec.name,
        num_classes=num_classes,
        act=cfg.act,
        proxy_affine=cfg.proxy_affine,
        drop_rate=cfg.dropout,
        drop_path_rate=cfg.drop_path,
        **kwargs,
    )


def soft_cross_entropy(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    """Cross entropy against soft targets (N, K), with label smoothing."""
    if smoothing:
        target = target * (1 - smoothing) + smoothing / target.shape[1]
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


@torch.no_grad()
def evaluate(model: nn.Module, loader, data: Data, device, autocast, channels_last: bool):
    """Mean loss and accuracy (%) over ``loader`` in eval mode."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = _prepare(x, data, device, channels_last), y.to(device)
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    return loss_sum / count, 100.0 * correct / count


def _prepare(x: Tensor, data: Data, device, channels_last: bool) -> Tensor:
    x = normalize(x.to(device, non_blocking=True), data.mean, data.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def probe_power(model: nn.Module, data: Data, device, channels_last: bool) -> list[dict]:
    """Power proportions of y^l at every norm-act step on the probe batch (eval mode)."""
    model.eval()
    x = _prepare(data.probe, data, device, channels_last)
    props = record_preactivations(model, x, lambda y: power_decomposition(y).proportions.tolist())
    return [dict(zip(TERM_NAMES, p, strict=True)) for p in props]


def _grad_scaler(device: torch.device, enabled: bool):
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    diff = {k for k in now if saved.get(k) != now[k]} - _RESUMABLE_DIFFERENCES
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in sorted(diff))
        raise ValueError(
            f"cannot resume with a different configuration ({details}); use a new --out directory"
        )


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into directory ``out``; returns the final summary (also ``final.json``).

    ``out`` receives ``config.json``, ``metrics.jsonl`` (one record per epoch),
    ``checkpoint.pt`` (after every epoch, written atomically) and ``final.json`` when done.

    Raises:
        FileExistsError: ``out`` holds a run and ``resume`` is false.
        TrainingDiverged: a non-finite loss (the last good checkpoint is kept).
    """
    out = Path(out)
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    if (out / FINAL).exists() and resume:
        return json.loads((out / FINAL).read_text())
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume or use a new --out")
    out.mkdir(parents=True, exist_ok=True)

    # --- setup: seed, device, data, model, optimizer
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dtype = amp_dtype(cfg, device)

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    data = build_data(cfg)
    model = build_model(cfg, data.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = _grad_scaler(device, enabled=dtype == torch.float16)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    start_epoch, elapsed = 0, 0.0

    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt["train_config"], cfg)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, elapsed = ckpt["epoch"], ckpt["elapsed"]
        truncate_jsonl(metrics_path, start_epoch)
        print(f"resuming {out} after epoch {start_epoch}")
    else:
        metrics_path.unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    mix = cfg.mixup > 0 or cfg.cutmix > 0
    steps = len(data.train)
    for epoch in range(start_epoch, cfg.epochs):
        # --- train one epoch
        t0 = time.perf_counter()
        model.train()
        data.train.set_epoch(epoch)
        mix_gen = epoch_generator(cfg.seed + 1, epoch)
        loss_sum, correct, count = 0.0, 0, 0
        bar = tqdm(
            data.train,
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=None,
        )
        for i, (x, y) in enumerate(bar):
            x, y = _prepare(x, data, device, cfg.channels_last), y.to(device)
            x, target = (
                mix_batch(x, y, data.num_classes, mix_gen, cfg.mixup, cfg.cutmix)
                if mix
                else (x, F.one_hot(y, data.num_classes).float())
            )
            lr = lr_at(cfg, epoch + (i + 1) / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                logits = model(x)
            loss = soft_cross_entropy(logits, target, cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {i + 1}; "
                    f"{out / CHECKPOINT} still holds the last good epoch ({epoch})"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
            seconds = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", img_s=f"{count / seconds:.0f}")
        train_seconds = time.perf_counter() - t0

        # --- evaluate, probe, checkpoint, log
        eval_model = ema.module if ema is not None else model
        test_loss, test_acc = evaluate(
            eval_model, data.test, data, device, autocast, cfg.channels_last
        )
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / count,
            "train_acc": 100.0 * correct / count,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "images_per_s": count / train_seconds,
        }
        if data.probe is not None:
            record["power"] = probe_power(eval_model, data, device, cfg.channels_last)
        elapsed += record["seconds"]
        # Metrics first: a record ahead of the checkpoint is dropped on resume, none is lost.
        append_jsonl(metrics_path, record)
        save_model(
            ckpt_path,
            model,
            train_config=cfg.to_dict(),
            epoch=epoch + 1,
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            ema=ema.module.state_dict() if ema is not None else None,
            rng=torch.get_rng_state(),
            elapsed=elapsed,
        )
        print(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {record['train_loss']:.3f} "
            f"acc {record['train_acc']:.2f}%  test loss {test_loss:.3f} acc {test_acc:.2f}%  "
            f"lr {lr:.4g}  {record['seconds']:.1f}s ({record['images_per_s']:.0f} img/s)",
            flush=True,
        )

    records = read_jsonl(metrics_path)
    last = records[-1] if records else {}
    final = {
        "model": cfg.model,
        "norm": parse_spec(cfg.norm).name,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "test_acc": last.get("test_acc"),
        "train_acc": last.get("train_acc"),
        "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "wall_seconds": elapsed,
        "config": cfg.to_dict(),
    }
    (out / FINAL).write_text(json.dumps(final, indent=1))
    return final
