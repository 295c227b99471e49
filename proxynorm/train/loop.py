"""The training loop: read top to bottom, one epoch at a time, resumable bit for bit on CPU.

Labatie et al., NeurIPS 2021, Appendix A.1 recipes (docs/METHOD.md §6), via ``train.config``.
Per epoch: train (optional mixed precision, gradient clipping, Mixup/CutMix, weight EMA), evaluate,
optionally decompose the power of a fixed probe batch at every norm-act step, then write an atomic
checkpoint and one JSONL record. Shuffling and augmentation depend only on (seed, epoch) and the
global RNG state is checkpointed, so ``resume=True`` reproduces an uninterrupted run.

Under ``torchrun`` the same loop runs in every process with DistributedDataParallel: each step's
global batch is split across the processes (``train.distributed``), metrics are summed over them,
and only rank 0 prints and writes files.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from proxynorm.analysis import TERM_NAMES, power_decomposition, record_preactivations
from proxynorm.checkpoint import load_checkpoint, save_model
from proxynorm.data import class_balanced_indices, load_small_images, mix_batch, normalize
from proxynorm.data.datasets import is_image_folder
from proxynorm.data.image_folder import ImageFolder
from proxynorm.data.loader import ArrayLoader, FolderDataset, FolderLoader, epoch_generator
from proxynorm.data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from proxynorm.environment import environment
from proxynorm.layers import convert_sync_batchnorm
from proxynorm.models import create_model
from proxynorm.train import distributed
from proxynorm.train.config import TrainConfig
from proxynorm.train.distributed import Dist
from proxynorm.train.metrics import append_jsonl, read_jsonl, truncate_jsonl
from proxynorm.train.optim import ModelEMA, build_optimizer, lr_at

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FINAL = "final.json"
HISTORY = "history.jsonl"  # one record per start or resume: the commit and path it ran on
# Options that may differ when resuming: they do not change the computation's result on CPU
# (the per-process batch follows from the global batch and the number of processes).
RESUMABLE_DIFFERENCES = {"device", "workers", "download", "dist_timeout", "batch_size", "compile"}


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


def build_data(cfg: TrainConfig, d: Dist | None = None, device: torch.device | None = None) -> Data:
    """Loaders for the configured data set (CIFAR in memory, other image folders streamed), each
    yielding process ``d.rank``'s share of every global batch. In-memory data sets live on
    ``device`` when it is an accelerator (batches gathered and augmented there)."""
    d = d or Dist()
    shard = {"rank": d.rank, "world_size": d.world_size}
    resident = {"device": device if device is not None and device.type != "cpu" else None}
    if cfg.data in ("cifar10", "cifar100"):
        train, test, num_classes = load_small_images(
            cfg.data, cfg.data_dir, cfg.download, size=cfg.image_size
        )
        if cfg.classes:
            train, test = train.only_classes(cfg.class_list), test.only_classes(cfg.class_list)
            num_classes = len(cfg.class_list)
        if cfg.subset:
            if cfg.subset > len(train):
                raise ValueError(f"subset={cfg.subset} exceeds the {len(train)} training images")
            # The subset depends on the data only (not on the seed): seeds vary init and order.
            train = train.subset(class_balanced_indices(train.labels.tolist(), cfg.subset, 0))
        probe = None
        if cfg.probe:
            probe = test.images[class_balanced_indices(test.labels.tolist(), cfg.probe, 0)]
        return Data(
            ArrayLoader(train, cfg.batch_size, True, cfg.seed, cfg.augment, **shard, **resident),
            ArrayLoader(test, cfg.batch_size, False, **shard, **resident),
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
        if cfg.subset or cfg.classes:
            raise ValueError("subset and classes are supported for cifar10/cifar100 only")
        train = FolderDataset(train_f, cfg.image_size, True, cfg.seed)
        test = FolderDataset(test_f, cfg.image_size, False, cfg.seed)
        probe = None
        if cfg.probe:
            probe = torch.stack([test[i][0] for i in range(min(cfg.probe, len(test)))])
        return Data(
            FolderLoader(train, cfg.batch_size, cfg.workers, **shard),
            FolderLoader(test, cfg.batch_size, cfg.workers, **shard),
            len(train_f.classes),
            IMAGENET_MEAN,
            IMAGENET_STD,
            probe,
        )
    raise ValueError(f"unknown data {cfg.data!r}; valid: cifar10, cifar100, imagefolder")


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model of ``cfg``: norm options go only to the norms they concern."""
    spec = cfg.spec
    kwargs = spec.select(groups=cfg.groups, norm_batch=cfg.norm_batch or None)
    if cfg.model == "random_net":
        raise ValueError("random_net has no classifier; train a ResNet or EfficientNet")
    return create_model(
        cfg.model,
        norm=spec,
        width_mult=cfg.width_mult,
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
    """Mean loss and accuracy (%) over ``loader`` in eval mode (over all processes' shards)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = _prepare(x, data, device, channels_last), y.to(device)
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    loss_sum, correct, count = distributed.sum_across([loss_sum, correct, count], device)
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


def resume_problem(saved: dict, cfg: TrainConfig, world_size: int, finished: bool) -> str | None:
    """Why a run saved with config ``saved`` cannot continue as ``cfg`` (``None`` if it can).

    Only options that do not change the result may differ, and ``epochs`` may grow when nothing
    else changes (the schedule then continues exactly as written: same milestones and warmup).
    """
    old = TrainConfig.from_dict(saved).for_world(world_size)
    diff = old.differences(cfg, ignore=RESUMABLE_DIFFERENCES | {"effective_lr"})
    if not diff:
        return None
    if set(diff) == {"epochs"} and cfg.epochs > old.epochs:
        return None  # extend the run
    details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
    why = f"different options ({details})"
    if (
        "epochs" in diff
        and cfg.epochs > old.epochs
        and set(diff)
        <= {
            "epochs",
            "milestones",
            "warmup_epochs",
        }
    ):
        why += (
            "; a longer run would change the schedule it was trained with (milestones and "
            f"warmup scale with --epochs): pass --milestones "
            f"{','.join(f'{m:g}' for m in old.milestones)} --warmup-epochs "
            f"{old.warmup_epochs:g} to extend it as it was"
        )
    elif "epochs" in diff and cfg.epochs < old.epochs:
        why += f"; it {'finished' if finished else 'was set to run'} {old.epochs} epochs"
    return why


def _start(out: Path, resume: bool, cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """Rank 0 looks at ``out``: a finished run's summary, a checkpoint to resume, or an error."""
    ckpt_path, final_path = out / CHECKPOINT, out / FINAL
    holds_run = ckpt_path.exists() or final_path.exists() or (out / METRICS).exists()
    if not resume:
        if holds_run:
            return {"error": f"{out} already holds a run; pass --resume or use a new --out"}
        return {}
    if final_path.exists():
        final = json.loads(final_path.read_text())
        problem = resume_problem(final.get("config", {}), cfg, world_size, finished=True)
        if problem:
            return {"refuse": f"cannot resume the finished run in {out}: {problem}"}
        if cfg.epochs <= final["epochs"]:
            return {"final": final}
        if not ckpt_path.exists():
            return {"error": f"cannot extend the finished run in {out}: its checkpoint is missing"}
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        problem = resume_problem(ckpt["train_config"], cfg, world_size, finished=False)
        if problem:
            return {"refuse": f"cannot resume {out}: {problem}; use a new --out"}
        return {"checkpoint": ckpt}
    what = "no checkpoint" if holds_run else "no run"
    return {"note": f"--resume: {what} in {out}, starting fresh"}


def _wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module that trains: DistributedDataParallel across processes, else the model itself."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@dataclass
class _Run:
    """What one training process holds between phases."""

    cfg: TrainConfig
    out: Path
    d: Dist
    device: torch.device
    data: Data
    model: nn.Module  # the module whose state is saved
    trainer: nn.Module  # what the steps call: the model, wrapped in DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: Any
    ema: ModelEMA | None
    amp: torch.dtype | None
    start_epoch: int = 0
    elapsed: float = 0.0

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into directory ``out``; returns the final summary (also ``final.json``).

    ``out`` receives ``config.json``, ``metrics.jsonl`` (one record per epoch),
    ``history.jsonl`` (the commit and compute path of the start and of every resume),
    ``checkpoint.pt`` (after every epoch, written atomically) and ``final.json`` when done.
    Launched by ``torchrun``, every process calls this; rank 0 reads and writes ``out`` and
    broadcasts what it read (a checkpoint to resume need not be on every machine).

    Raises:
        FileExistsError: ``out`` holds a run and ``resume`` is false.
        ValueError: ``resume`` with options that would change the result (the message lists
            them); a finished run may be extended to more ``epochs`` when nothing else changes.
        TrainingDiverged: a non-finite loss (the last good checkpoint is kept).
    """
    out = Path(out)
    d, device = distributed.setup(cfg.device, cfg.dist_timeout)
    cfg = cfg.for_world(d.world_size)
    start = distributed.broadcast(_start(out, resume, cfg, d.world_size) if d.main else None)
    if "final" in start:
        return start["final"]
    if "error" in start:
        raise FileExistsError(start["error"])
    if "refuse" in start:
        raise ValueError(start["refuse"])
    if "note" in start and d.main:
        print(start["note"], flush=True)
    run = _build(cfg, out, d, device)
    rng_restored = _restore(run, start.get("checkpoint"))
    _open_run_dir(run, resumed=start.get("checkpoint") is not None)
    if d.rank > 0 and not rng_restored:
        # Rank 0 keeps the single-process random stream; other ranks draw their own dropout.
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank + run.start_epoch)
    if d.main:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    run.trainer = _wrap(run.model, d, device)
    if cfg.compile != "off":
        mode = None if cfg.compile == "default" else cfg.compile
        run.trainer = torch.compile(run.trainer, mode=mode)
    for epoch in range(run.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums, lr, train_seconds = _train_epoch(run, epoch)
        _end_epoch(run, epoch, sums, lr, train_seconds, t0)
    return distributed.broadcast(_finish(cfg, out, run.elapsed, d) if d.main else None)


def _build(cfg: TrainConfig, out: Path, d: Dist, device: torch.device) -> _Run:
    """Seed, data, model (SyncBN, memory format), optimizer, gradient scaler and EMA."""
    torch.manual_seed(cfg.seed)
    dtype = amp_dtype(cfg, device)
    data = build_data(cfg, d, device)
    model = build_model(cfg, data.num_classes).to(device)
    if cfg.sync_bn:
        if not cfg.spec.batch_dependent:
            warnings.warn(
                f"--sync-bn has no effect on {cfg.norm!r}: it is batch independent",
                stacklevel=3,
            )
        elif cfg.norm_batch and cfg.norm_batch < cfg.global_batch:
            warnings.warn(
                f"--sync-bn normalizes BN over the global batch of {cfg.global_batch}; "
                f"norm_batch={cfg.norm_batch} is ignored",
                stacklevel=3,
            )
        model = convert_sync_batchnorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = _grad_scaler(device, enabled=dtype == torch.float16)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    return _Run(cfg, out, d, device, data, model, model, optimizer, scaler, ema, dtype)


def _restore(run: _Run, ckpt: dict[str, Any] | None) -> bool:
    """Load a checkpoint to resume from into ``run``; whether this process's RNG was restored."""
    if ckpt is None:
        return False
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        run.ema.module.load_state_dict(ckpt["ema"])
    rng, d = ckpt.get("rank_rng") or [ckpt["rng"]], run.d
    restored = len(rng) == d.world_size or d.main
    if restored:
        torch.set_rng_state(rng[d.rank if len(rng) == d.world_size else 0])
    run.start_epoch, run.elapsed = ckpt["epoch"], ckpt["elapsed"]
    if d.main:
        print(f"resuming {run.out} after epoch {run.start_epoch}")
        truncate_jsonl(run.out / METRICS, run.start_epoch)
    return restored


def _open_run_dir(run: _Run, resumed: bool) -> None:
    """Rank 0, once data and model are built: from here on the run directory is written."""
    if not run.d.main:
        return
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    (out / FINAL).unlink(missing_ok=True)  # a run being extended is no longer finished
    if not resumed:
        (out / METRICS).unlink(missing_ok=True)
        (out / HISTORY).unlink(missing_ok=True)
    append_jsonl(out / HISTORY, _history_record(run.start_epoch, resumed, run.cfg))


def _train_epoch(run: _Run, epoch: int) -> tuple[list[float], float, float]:
    """One epoch of steps; returns the (loss, correct, count) sums over all processes, the last
    lr and the seconds spent."""
    cfg, data, d, device = run.cfg, run.data, run.d, run.device
    t0 = time.perf_counter()
    run.model.train()
    data.train.set_epoch(epoch)
    mix_gen = epoch_generator(cfg.seed + 1, epoch)
    mix = cfg.mixup > 0 or cfg.cutmix > 0
    steps = len(data.train)
    loss_sum, correct, count, lr = 0.0, 0, 0, cfg.lr
    bar = tqdm(data.train, total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=None if d.main else True)  # fmt: skip
    for i, (x, y) in enumerate(bar):
        x, y = _prepare(x, data, device, cfg.channels_last), y.to(device)
        x, target = (
            mix_batch(x, y, data.num_classes, mix_gen, cfg.mixup, cfg.cutmix)
            if mix
            else (x, F.one_hot(y, data.num_classes).float())
        )
        lr = lr_at(cfg, epoch + (i + 1) / steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        with run.autocast():
            logits = run.trainer(x)
        loss = soft_cross_entropy(logits, target, cfg.label_smoothing)
        _check_finite(run, loss, epoch, i)
        _step(run, loss)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
        seconds = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss_sum / count:.3f}", img_s=f"{count / seconds:.0f}")
    train_seconds = time.perf_counter() - t0
    return distributed.sum_across([loss_sum, correct, count], device), lr, train_seconds


def _check_finite(run: _Run, loss: Tensor, epoch: int, i: int) -> None:
    finite = bool(torch.isfinite(loss))
    if run.d.enabled:  # every process stops together (no peer is left waiting)
        finite = distributed.sum_across([float(not finite)], run.device)[0] == 0
    if not finite:
        raise TrainingDiverged(
            f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {i + 1}; "
            f"{run.out / CHECKPOINT} still holds the last good epoch ({epoch})"
        )


def _step(run: _Run, loss: Tensor) -> None:
    """Backward and optimizer step (gradient scaling, clipping, EMA)."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if run.ema is not None:
        run.ema.update(run.model)


def _end_epoch(run: _Run, epoch: int, sums, lr: float, train_seconds: float, t0: float) -> None:
    """Evaluate, probe, then (rank 0) the metrics record first and the checkpoint after it: a
    record ahead of the checkpoint is dropped on resume, none is lost."""
    cfg, data = run.cfg, run.data
    loss_sum, correct, count = sums
    eval_model = run.ema.module if run.ema is not None else run.model
    test_loss, test_acc = evaluate(
        eval_model, data.test, data, run.device, run.autocast, cfg.channels_last
    )
    rank_rng = distributed.gather(torch.get_rng_state())
    if not run.d.main:
        return
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
        record["power"] = probe_power(eval_model, data, run.device, cfg.channels_last)
    run.elapsed += record["seconds"]
    append_jsonl(run.out / METRICS, record)
    save_model(
        run.out / CHECKPOINT,
        run.model,
        train_config=cfg.to_dict(),
        epoch=epoch + 1,
        optimizer=run.optimizer.state_dict(),
        scaler=run.scaler.state_dict(),
        ema=run.ema.module.state_dict() if run.ema is not None else None,
        rng=rank_rng[0],
        rank_rng=rank_rng,
        elapsed=run.elapsed,
        world_size=run.d.world_size,
    )
    print(
        f"epoch {epoch + 1}/{cfg.epochs}  train loss {record['train_loss']:.3f} "
        f"acc {record['train_acc']:.2f}%  test loss {test_loss:.3f} acc {test_acc:.2f}%  "
        f"lr {lr:.4g}  {record['seconds']:.1f}s ({record['images_per_s']:.0f} img/s)",
        flush=True,
    )


def _history_record(start_epoch: int, resumed: bool, cfg: TrainConfig) -> dict[str, Any]:
    """What this process continues the run with: the commit (``+dirty`` when tracked files
    differ from it), the epoch it starts after, and the compute path (threads, CPU and its
    vector instruction set, C++ kernel, compile), so that a run that spans commits or machines
    says which epochs ran on which code and hardware."""
    env = environment()
    return {
        "event": "resume" if resumed else "start",
        "after_epoch": start_epoch,
        "commit": env["commit"],
        "proxynorm": env["proxynorm"],
        "torch": env["torch"],
        "pillow": env["pillow"],
        "threads": env["threads"],
        "cpu": env["cpu"],
        "cpu_capability": env["cpu_capability"],
        "pn_cpp_kernel": env["pn_cpp_kernel"],
        "compile": cfg.compile,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _finish(cfg: TrainConfig, out: Path, elapsed: float, d: Dist) -> dict[str, Any]:
    """Write ``final.json`` from the last metrics record (rank 0)."""
    records = read_jsonl(out / METRICS)
    last = records[-1] if records else {}
    final = {
        "model": cfg.model,
        "norm": cfg.spec.name,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "test_acc": last.get("test_acc"),
        "train_acc": last.get("train_acc"),
        "test_loss": last.get("test_loss"),
        "train_loss": last.get("train_loss"),
        "wall_seconds": elapsed,
        "world_size": d.world_size,
        "environment": environment(),
        "history": read_jsonl(out / HISTORY),
        "config": cfg.to_dict(),
    }
    (out / FINAL).write_text(json.dumps(final, indent=1))
    return final
