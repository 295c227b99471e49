"""Training configuration: recipe YAML files (defaults) + command-line overrides -> TrainConfig.

Each field of :class:`TrainConfig` carries its help text and its allowed values beside it
(``opt(default, help, check)``); the CLI's flags are generated from them, and every value is
checked at construction — from a flag, a recipe file or Python alike — with the field's allowed
range in the message.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from proxynorm.layers import NormSpec

RECIPES = ("cifar", "imagenet-resnet", "efficientnet")


# --- checks: each returns None when the value is allowed, else what is expected --------------


def _number(lo: float | None = None, hi: float | None = None, lo_open=False, hi_open=False):
    def check(v):
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return _range_text(lo, hi, lo_open, hi_open)
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return _range_text(lo, hi, lo_open, hi_open)
        return None

    check.text = _range_text(lo, hi, lo_open, hi_open)
    return check


def _range_text(lo, hi, lo_open, hi_open) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _one_of(*values: str):
    def check(v):
        return None if v in values else f"one of {', '.join(values)}"

    check.text = f"one of {', '.join(values)}"
    return check


def _pattern(regex: str, text: str):
    def check(v):
        return None if re.fullmatch(regex, v) else text

    check.text = text
    return check


def _each(inner):
    def check(v):
        bad = [x for x in v if inner(x)]
        return f"each {inner.text}" if bad else None

    check.text = f"each {inner.text}"
    return check


def _spec(v):
    from proxynorm.layers import parse_spec

    try:
        parse_spec(v)
    except ValueError as err:
        return str(err).split("; ", 1)[-1]
    return None


def _model(v):
    from proxynorm.models import list_models

    names = [m for m in list_models() if m != "random_net"]
    return None if v in names else f"one of {', '.join(names)}"


def _activation(v):
    from proxynorm.layers.activation import get_act

    try:
        get_act(v)
    except ValueError as err:
        return str(err).split("; ", 1)[-1]
    return None


def opt(default: Any, help: str, check: Callable[[Any], str | None] | None = None):
    """A :class:`TrainConfig` field: its default, help text (the CLI's) and allowed values."""
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {}
    if not kw:
        kw["default"] = default
    return field(metadata={"help": help, "check": check}, **kw)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as ``config.json`` beside its results.

    Raises (at construction):
        TypeError: a value of the wrong type (e.g. ``lr: "abc"`` in a recipe).
        ValueError: a value outside its field's range; the message gives the range.
    """

    # --- what to train
    model: str = opt("resnet20", "model name (see create_model)", _model)
    norm: str = opt("gn+pn", "norm spec, e.g. bn, gn, gn+pn, ln+pn", _spec)
    groups: int | None = opt(None, "GroupNorm groups (gn, gn+pn, evos0 only)", _number(1))
    act: str | None = opt(None, "activation (default: the model's)", _activation)
    proxy_affine: bool = opt(True, "learn PN's beta~, gamma~")
    width_mult: float = opt(1.0, "channel width multiplier", _number(0, lo_open=True))
    # --- data
    data: str = opt("cifar10", "data set", _one_of("cifar10", "cifar100", "imagefolder"))
    data_dir: str = opt(
        "data",
        "official CIFAR folder (downloaded there when missing), or an image-folder tree or zip "
        "such as ../shared/data/cifar10-jpeg.zip",
        _pattern(r".+", "a non-empty path"),
    )
    classes: str | None = opt(
        None,
        "train and test on these classes only, relabelled 0..k-1 in the order given "
        "(e.g. 0-4 or 5,7,9; cifar10/cifar100)",
        _pattern(r"\d+(-\d+)?(,\d+(-\d+)?)*", "comma-separated labels or ranges such as 0-4"),
    )
    subset: int | None = opt(
        None, "train on a class-balanced subset of N images (of classes, if given)", _number(1)
    )
    download: bool = opt(True, "download CIFAR when missing (if the network allows)")
    workers: int = opt(0, "data-loading processes (image folders)", _number(0))
    # --- run
    recipe: str = opt("cifar", "cifar, imagenet-resnet, efficientnet, or a YAML file")
    extra_reg: bool = opt(
        False,
        "the recipe's extra regularization (label smoothing, dropout, stochastic depth / Mixup)",
    )
    seed: int = opt(0, "random seed (initialization, order, augmentation)", _number(0))
    device: str = opt(
        "auto",
        "cpu, cuda, cuda:N, mps or auto",
        _pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N"),
    )
    amp: str = opt(
        "auto",
        "mixed precision: auto (on for CUDA), off, bf16, fp16",
        _one_of("auto", "off", "bf16", "fp16"),
    )
    channels_last: bool = opt(False, "channels_last memory format")
    grad_clip: float = opt(0.0, "clip the gradient norm (0: off)", _number(0))
    probe: int = opt(
        0, "power decomposition of N fixed test images every epoch (0: off)", _number(0)
    )
    compile: str = opt(
        "off",
        "torch.compile the training step",
        _one_of("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    # --- data parallelism (torchrun)
    global_batch: int | None = opt(
        None,
        "images per step over all torchrun processes (per process: global_batch / world size)",
        _number(1),
    )
    sync_bn: bool = opt(False, "BN statistics over the global batch (SyncBatchNorm) under torchrun")
    dist_timeout: float = opt(
        600.0,
        "seconds a process waits for a peer before failing (torchrun)",
        _number(0, lo_open=True),
    )
    # --- recipe fields (defaults come from the recipe's YAML)
    optimizer: str = opt("sgd", "optimizer", _one_of("sgd", "rmsprop"))
    lr: float = opt(
        0.1,
        "learning rate, used as given (the recipe's lr is scaled linearly to the global batch)",
        _number(0, lo_open=True),
    )
    lr_reference_batch: int = opt(128, "the batch at which the recipe's lr is given", _number(1))
    batch_size: int = opt(128, "images per step per process (under torchrun: per rank)", _number(1))
    scale_lr: bool = opt(True, "scale lr linearly from lr_reference_batch to the global batch")
    momentum: float = opt(0.9, "momentum", _number(0, 1, hi_open=True))
    nesterov: bool = opt(False, "Nesterov momentum (SGD)")
    rmsprop_alpha: float = opt(0.9, "RMSProp smoothing", _number(0, 1, hi_open=True))
    rmsprop_eps: float = opt(1e-3, "RMSProp epsilon", _number(0, lo_open=True))
    weight_decay: float = opt(1e-4, "weight decay", _number(0))
    weight_decay_on: str = opt(
        "all", "parameters with weight decay", _one_of("all", "conv_and_proxy")
    )
    epochs: int = opt(
        160, "epochs (the recipe's milestones and warmup are scaled to it)", _number(1)
    )
    warmup_epochs: float = opt(5.0, "linear warmup epochs", _number(0))
    schedule: str = opt(
        "multistep",
        "learning-rate schedule",
        _one_of("multistep", "exponential", "cosine", "constant"),
    )
    milestones: list[float] = opt(
        [80, 120], "comma-separated epochs of lr decay", _each(_number(0))
    )
    decay: float = opt(0.1, "lr factor at each milestone / decay step", _number(0, 1, lo_open=True))
    decay_every: float = opt(2.4, "epochs between exponential decays", _number(0, lo_open=True))
    norm_batch: int | None = opt(128, "BN statistics over this many inputs (bn only)", _number(1))
    augment: str = opt("cifar", "augmentation", _one_of("cifar", "imagenet", "none"))
    image_size: int = opt(32, "input height and width", _number(1))
    label_smoothing: float = opt(0.0, "label smoothing", _number(0, 1, hi_open=True))
    dropout: float = opt(0.0, "dropout before the classifier", _number(0, 1, hi_open=True))
    drop_path: float = opt(0.0, "stochastic depth rate", _number(0, 1, hi_open=True))
    mixup: float = opt(0.0, "Mixup alpha (0: off)", _number(0))
    cutmix: float = opt(0.0, "CutMix alpha (0: off)", _number(0))
    ema_decay: float = opt(0.0, "weight EMA decay (0: off)", _number(0, 1, hi_open=True))

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs:g} must be <= epochs={self.epochs}"
            )
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        labels = self.class_list or []
        if len(set(labels)) != len(labels):
            raise ValueError(f"classes={self.classes!r}: a label is named twice")

    @property
    def spec(self) -> NormSpec:
        """``norm`` parsed: what the model and the loop are built from."""
        from proxynorm.layers import parse_spec

        return parse_spec(self.norm)

    @property
    def class_list(self) -> list[int] | None:
        """``classes`` parsed: ``"0-2,5"`` is ``[0, 1, 2, 5]``."""
        if self.classes is None:
            return None
        out: list[int] = []
        for part in self.classes.split(","):
            lo, _, hi = part.partition("-")
            if int(hi or lo) < int(lo):
                raise ValueError(f"classes={self.classes!r}: range {part} goes down")
            out += range(int(lo), int(hi or lo) + 1)
        return out

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

    def describe(self, world_size: int = 1) -> str:
        """One line: model, norm, data, recipe, epochs, batch (per process where several) and
        the lr that ``world_size`` processes train with."""
        shown = self.for_world(world_size)
        processes = f" = {world_size} processes x {shown.batch_size}" if world_size > 1 else ""
        return (
            f"{self.model} {self.norm} on {self.data} ({self.data_dir}), recipe {self.recipe}: "
            f"{self.epochs} epochs, batch {shown.global_batch}{processes}, "
            f"lr {shown.effective_lr:.4g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "effective_lr": self.effective_lr}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def differences(self, other: TrainConfig, ignore: set[str] = frozenset()) -> dict:
        """``{field: (self's value, other's value)}`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b.get(k) and k not in ignore}


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of field ``f`` with its type checked (ints accepted as floats), then its range."""
    kind = f.type.replace(" | None", "")
    if value is None and "None" in f.type:
        return None
    if kind == "list[float]":
        if not isinstance(value, list | tuple) or not all(_is_number(v) for v in value):
            raise TypeError(f"{f.name}={value!r}: expected a list of numbers")
        value = [float(v) for v in value]
    elif kind == "float":
        if not _is_number(value) or not math.isfinite(value):
            raise TypeError(f"{f.name}={value!r}: expected a finite number")
        value = float(value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise TypeError(f"{f.name}={value!r}: expected an integer")
    elif not isinstance(value, _KINDS[kind]):
        raise TypeError(f"{f.name}={value!r}: expected {'true/false' if kind == 'bool' else kind}")
    check = f.metadata.get("check")
    problem = check(value) if check is not None else None
    if problem is not None:
        raise ValueError(f"{f.name}={value!r}: must be {problem}")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def recipe_values(name: str, extra_reg: bool = False) -> dict[str, Any]:
    """A recipe's fields (packaged YAML by name, or a path to a YAML file).

    Raises:
        ValueError: unknown recipe, a file that is not valid YAML or not a mapping of options.
    """
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
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"recipe {name} is not valid YAML{line}: {err}".split("\n")[0]) from None
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(
            f"recipe {name} must be a mapping of training options (option: value), "
            f"got a {type(values).__name__}"
        )
    extra = values.pop("extra", {}) or {}
    if not isinstance(extra, dict):
        raise ValueError(f"recipe {name}: 'extra' must be a mapping, got {type(extra).__name__}")
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
        ValueError: unknown recipe or field (the message lists the valid fields), or a value
            out of its range (the message gives the range).
        TypeError: a value of the wrong type.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    values = recipe_values(recipe, extra_reg)
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        valid = ", ".join(sorted(names))
        raise ValueError(f"recipe {recipe}: unknown training option(s) {unknown}; valid: {valid}")
    # Check the recipe's own values first, so that an error names the recipe.
    try:
        TrainConfig(**values)
    except (TypeError, ValueError) as err:
        raise type(err)(f"recipe {recipe}: {err}") from None
    recipe_epochs = values.get("epochs", TrainConfig.epochs)
    values.update(overrides, recipe=recipe, extra_reg=extra_reg)
    if "epochs" in overrides and values["epochs"] != recipe_epochs and _is_number(values["epochs"]):
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
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown training option(s) {unknown}; valid: {', '.join(sorted(names))}")
    return TrainConfig(**values)


_FLAG_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "int | None": int,
    "str | None": str,
    "list[float]": lambda s: [float(v) for v in s.split(",") if v.strip()],
}


def add_arguments(parser: Any, skip: tuple[str, ...] = ()) -> None:
    """One command-line flag per :class:`TrainConfig` field (``--batch-size`` for
    ``batch_size``), with the field's help and range; unset flags stay ``None`` so that the
    recipe's (or the default) value is kept (:func:`overrides`)."""
    import argparse

    g = parser.add_argument_group("training options (defaults: the recipe, then TrainConfig)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        check = f.metadata.get("check")
        allowed = f"; {check.text}" if getattr(check, "text", None) else ""
        help_text = f"{f.metadata.get('help', '')} (default {default}{allowed})".strip()
        if f.type == "bool":
            g.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            g.add_argument(flag, type=_FLAG_TYPES[f.type], default=None, help=help_text)


def overrides(args: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields set on the command line (:func:`add_arguments`), for :func:`build_config`."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe", "extra_reg", *skip}
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
