"""Optimizers with the paper's weight-decay groups (docs/METHOD.md §6), learning-rate schedules
and a weight EMA."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from proxynorm.train.config import TrainConfig


def weight_decay_groups(model: nn.Module, weight_decay: float, on: str) -> list[dict]:
    """Parameter groups for weight decay.

    ``on="all"``: every parameter (SGD recipes: γ, β, β~, γ~ included, docs/METHOD.md §6).
    ``on="conv_and_proxy"``: conv weights and PN's β~, γ~ only (EfficientNet recipe).
    """
    if on == "all":
        return [
            {
                "params": [p for p in model.parameters() if p.requires_grad],
                "weight_decay": weight_decay,
            }
        ]
    if on != "conv_and_proxy":
        raise ValueError(f"weight_decay_on must be 'all' or 'conv_and_proxy', got {on!r}")
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_conv_weight = isinstance(module, nn.Conv2d) and name == "weight"
            (decay if is_conv_weight or name.startswith("proxy_") else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def fused_sgd_available() -> bool:
    """Whether this torch has fused SGD for CPU parameters (torch >= 2.4)."""
    try:
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, fused=True)
        return True
    except (TypeError, RuntimeError):
        return False


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer over :func:`weight_decay_groups`.

    SGD is PyTorch's fused implementation where the installed torch has it for the parameters'
    device (on CPU since torch 2.4), otherwise the default one. On a CPU at batch 1-2 the
    per-parameter Python loop of the default implementation costs a compiled training step
    6-9 % (docs/PERFORMANCE.md, ``benchmarks/optimizer_step.py``; GN+PN has two more parameter
    tensors per layer than GN+ReLU). The updates are the same to float32 rounding (tested).
    """
    groups = weight_decay_groups(model, cfg.weight_decay, cfg.weight_decay_on)
    if cfg.optimizer == "sgd":
        kw = {"lr": cfg.effective_lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov}
        try:
            return torch.optim.SGD(groups, fused=True, **kw)
        except (TypeError, RuntimeError):  # no fused SGD in this torch, or not for this device
            return torch.optim.SGD(groups, **kw)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups,
            lr=cfg.effective_lr,
            alpha=cfg.rmsprop_alpha,
            eps=cfg.rmsprop_eps,
            momentum=cfg.momentum,
        )
    raise ValueError(f"optimizer must be 'sgd' or 'rmsprop', got {cfg.optimizer!r}")


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Learning rate at a fractional epoch (the loop passes the epoch reached at the end of each
    step): linear warmup from 0, then the recipe's decay schedule."""
    base = cfg.effective_lr
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return base * epoch / cfg.warmup_epochs
    if cfg.schedule == "multistep":
        return base * cfg.decay ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "exponential":
        return base * cfg.decay ** math.floor((epoch - cfg.warmup_epochs) / cfg.decay_every)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * base * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    if cfg.schedule == "constant":
        return base
    raise ValueError(
        f"schedule must be multistep, exponential, cosine or constant, got {cfg.schedule!r}"
    )


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers, for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(
            self.module.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if e.dtype.is_floating_point:
                e.lerp_(m, 1 - self.decay)
            else:
                e.copy_(m)
