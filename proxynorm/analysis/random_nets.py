"""Measurements over independent realizations of random nets (Definition 1; docs/METHOD.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from proxynorm.analysis.power import power_decomposition
from proxynorm.analysis.probes import record_layer_io
from proxynorm.analysis.theory import linearity_ratio
from proxynorm.models import create_model


def _setting(default: Any, minimum: float | None, help: str = "") -> Any:
    """A field with its lower bound and help beside it (read by ``__post_init__`` and by the
    command line's flags)."""
    return field(default=default, metadata={"min": minimum, "help": help})


@dataclass(frozen=True)
class RandomNetConfig:
    """Random-net settings (the paper's Fig. 2 uses width 1024, depth 50, first stride 2)."""

    depth: int = _setting(50, 1)
    width: int = _setting(128, 1)
    act: str = _setting("relu", None, "activation φ (relu, silu, gelu, identity...)")
    kernel_size: int = _setting(3, 1)
    gamma_std: float = _setting(0.2, 0, "γ ~ N(1, gamma_std²)")
    beta_std: float = _setting(0.2, 0, "β ~ N(0, beta_std²)")
    first_stride: int = _setting(2, 1)
    seed: int = _setting(0, 0, "seed of realization 0 (and of the inputs)")

    @classmethod
    def from_namespace(cls, ns: Any) -> RandomNetConfig:
        """The settings read off an object that has them as attributes (parsed flags)."""
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls)})

    def __post_init__(self) -> None:
        for f in fields(self):
            value, low = getattr(self, f.name), f.metadata["min"]
            if low is not None and not value >= low:
                raise ValueError(f"{f.name} must be >= {low}, got {value}")

    def build(self, norm: str, realization: int) -> torch.nn.Module:
        """Realization ``r`` of a random net with ``norm``, in train mode (batch statistics)."""
        return create_model(
            "random_net",
            norm=norm,
            depth=self.depth,
            width=self.width,
            act=self.act,
            kernel_size=self.kernel_size,
            gamma_std=self.gamma_std,
            beta_std=self.beta_std,
            first_stride=self.first_stride,
            seed=self.seed + realization,
        ).train()


def over_realizations(
    norm: str,
    inputs: Tensor,
    config: RandomNetConfig,
    realizations: int,
    reduce: Callable[[Tensor, Tensor], Any],
    progress: tqdm | None = None,
) -> list[list[Any]]:
    """``reduce(y^l, z^l)`` per layer of ``realizations`` random nets, as [realization][layer]."""
    if realizations < 1:
        raise ValueError(f"realizations must be >= 1, got {realizations}")
    out = []
    for r in range(realizations):
        out.append(record_layer_io(config.build(norm, r), inputs, reduce))
        if progress is not None:
            progress.update(1)
    return out


def power_proportions(
    norm: str,
    inputs: Tensor,
    config: RandomNetConfig,
    realizations: int,
    progress: tqdm | None = None,
) -> Tensor:
    """(realizations, depth, 4) proportions of the four power terms at every layer."""
    rows = over_realizations(
        norm,
        inputs,
        config,
        realizations,
        lambda y, z: power_decomposition(y).proportions,
        progress,
    )
    return torch.stack([torch.stack(r) for r in rows])


def linearity_ratios(
    norm: str,
    inputs: Tensor,
    config: RandomNetConfig,
    realizations: int,
    progress: tqdm | None = None,
) -> Tensor:
    """(realizations, depth) channel-wise nonlinearity ratio of every layer."""
    rows = over_realizations(norm, inputs, config, realizations, linearity_ratio, progress)
    return torch.tensor(rows, dtype=torch.float64)


def summarize(values: Tensor, low: float = 0.1, high: float = 0.9) -> dict[str, list]:
    """Mean, std and a [low, high] quantile interval over dim 0, as JSON-ready lists."""
    return {
        "mean": values.mean(0).tolist(),
        "std": values.std(0, correction=0).tolist(),
        f"q{int(low * 100)}": values.quantile(low, dim=0).tolist(),
        f"q{int(high * 100)}": values.quantile(high, dim=0).tolist(),
    }
