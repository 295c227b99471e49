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
    compile: str = "off"
    # --- data parallelism (torchrun)
    global_batch: int | None = None
    sync_bn: bool = False
    dist_timeout: float = 600.0
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
        """``lr`` scaled linearly from ``lr_reference_batch`` to the global batch (if scale_lr)."""
        if not self.scale_lr:
            return self.lr
        return self.lr * (self.global_batch or self.batch_size) / self.lr_reference_batch

    def for_world(self, world_size: int) -> TrainConfig:
        """This config with ``batch_size`` per process and ``global_batch`` for ``world_size``
        processes: ``global_batch`` (when set) is split evenly, otherwise every process takes
        ``batch_size`` and the global batch is ``batch_size × world_size``.

        Raises:
            ValueError: ``global_batch`` is not a positive multiple of ``world_size``.
        """
        if self.global_batch is None:
            return dataclasses.replace(self, global_batch=self.batch_size * world_size)
        if self.global_batch < 1 or self.global_batch % world_size:
            raise ValueError(
                f"global_batch={self.global_batch} must be a positive multiple of the "
                f"{world_size} processes (set --global-batch or a per-process --batch-size)"
            )
        return dataclasses.replace(self, batch_size=self.global_batch // world_size)

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

    An explicit ``lr`` is used as given (at the run's own global batch) unless
    ``lr_reference_batch`` or ``scale_lr`` is also given; otherwise the recipe's lr is scaled
    linearly to the global batch when ``scale_lr``. The recipe's ``batch_size`` is the global
    batch (split over torchrun's processes) unless ``batch_size`` (per process) or
    ``global_batch`` is given. A shorter or longer ``epochs`` without explicit ``milestones`` /
    ``warmup_epochs`` scales the recipe's milestones and warmup by the same factor (the schedule
    keeps its shape).

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
    if not {"batch_size", "global_batch"} & set(overrides):
        # The recipe's batch is the paper's global batch, whatever the number of processes.
        values["global_batch"] = values.get("batch_size", TrainConfig.batch_size)
    if "lr" in overrides and not {"lr_reference_batch", "scale_lr"} & set(overrides):
        values["scale_lr"] = False
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; valid: {', '.join(sorted(names))}")
    return TrainConfig(**values)
