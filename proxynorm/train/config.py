"""Training configuration: recipe YAML files (defaults) + command-line overrides -> TrainConfig."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

RECIPES = ("cifar", "imagenet-resnet", "efficientnet")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` beside its results."""

    # --- what to train
    model: str = "resnet20"
    norm: str = "gn+pn"
    groups: int | None = None
    act: str | None = None
    proxy_affine: bool = True
    width_mult: float = 1.0
    # --- data
    data: str = "cifar10"
    data_dir: str = "data"
    subset: int | None = None
    download: bool = True
    workers: int = 0
    # --- run
    recipe: str = "cifar"
    extra_reg: bool = False
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    grad_clip: float = 0.0
    probe: int = 0
    # --- recipe fields (defaults come from the recipe's YAML)
    optimizer: str = "sgd"
    lr: float = 0.1
    lr_reference_batch: int = 128
    batch_size: int = 128
    scale_lr: bool = True
    momentum: float = 0.9
    nesterov: bool = False
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-3
    weight_decay: float = 1e-4
    weight_decay_on: str = "all"
    epochs: int = 160
    warmup_epochs: float = 5.0
    schedule: str = "multistep"
    milestones: list[float] = field(default_factory=lambda: [80, 120])
    decay: float = 0.1
    decay_every: float = 2.4
    norm_batch: int | None = 128
    augment: str = "cifar"
    image_size: int = 32
    label_smoothing: float = 0.0
    dropout: float = 0.0
    drop_path: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float = 0.0

    @property
    def effective_lr(self) -> float:
        """``lr`` scaled linearly from ``lr_reference_batch`` to ``batch_size`` (if scale_lr)."""
        if not self.scale_lr:
            return self.lr
        return self.lr * self.batch_size / self.lr_reference_batch

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "effective_lr": self.effective_lr}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def recipe_values(name: str, extra_reg: bool = False) -> dict[str, Any]:
    """A recipe's fields (packaged YAML by name, or a path to a YAML file)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    elif name in RECIPES:
        text = resources.files("proxynorm.train").joinpath(f"recipes/{name}.yaml").read_text()
    else:
        raise ValueError(
            f"unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)} "
            "or a path to a .yaml file"
        )
    values = yaml.safe_load(text) or {}
    extra = values.pop("extra", {}) or {}
    if extra_reg:
        values.update(extra)
    values["lr_reference_batch"] = values.get("batch_size", TrainConfig.batch_size)
    return values


def build_config(recipe: str = "cifar", extra_reg: bool = False, **overrides: Any) -> TrainConfig:
    """Recipe defaults, then ``overrides`` (``None`` values are ignored).

    An explicit ``lr`` is taken at the run's own batch size unless ``lr_reference_batch`` is also
    given; otherwise the recipe's lr is scaled linearly to ``batch_size`` when ``scale_lr``.
    A shorter or longer ``epochs`` without explicit ``milestones`` / ``warmup_epochs`` scales the
    recipe's milestones and warmup by the same factor (the schedule keeps its shape).

    Raises:
        ValueError: unknown recipe or field (the message lists the valid fields).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    values = recipe_values(recipe, extra_reg)
    recipe_epochs = values.get("epochs", TrainConfig.epochs)
    values.update(overrides, recipe=recipe, extra_reg=extra_reg)
    if "epochs" in overrides and values["epochs"] != recipe_epochs:
        factor = values["epochs"] / recipe_epochs
        if "milestones" not in overrides and "milestones" in values:
            values["milestones"] = [m * factor for m in values["milestones"]]
        if "warmup_epochs" not in overrides:
            values["warmup_epochs"] = values.get("warmup_epochs", 0.0) * factor
    if "lr" in overrides and "lr_reference_batch" not in overrides:
        values["lr_reference_batch"] = values.get("batch_size", TrainConfig.batch_size)
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; valid: {', '.join(sorted(names))}")
    return TrainConfig(**values)
