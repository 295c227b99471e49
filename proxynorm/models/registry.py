"""Model registry: ``create_model(name, norm=...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from proxynorm.layers import NormSpec
from proxynorm.layers.activation import Activation
from proxynorm.models import pretrained
from proxynorm.models.builder import NORM_KWARGS, LayerFactory
from proxynorm.models.efficientnet import EfficientNet
from proxynorm.models.random_net import RandomNet
from proxynorm.models.resnet import cifar_resnet, imagenet_resnet

# name -> (builder taking the LayerFactory first, default activation, has a classifier)
_MODELS: dict[str, tuple[Callable[..., nn.Module], str, bool]] = {
    **{f"resnet{d}": (partial(cifar_resnet, depth=d), "relu", True) for d in (20, 32, 44, 56, 110)},
    "resnet50": (partial(imagenet_resnet, layers=[3, 4, 6, 3]), "relu", True),
    "resnet101": (partial(imagenet_resnet, layers=[3, 4, 23, 3]), "relu", True),
    "resnext50_32x4d": (
        partial(imagenet_resnet, layers=[3, 4, 6, 3], cardinality=32, base_width=4),
        "relu",
        True,
    ),
    "resnext101_32x4d": (
        partial(imagenet_resnet, layers=[3, 4, 23, 3], cardinality=32, base_width=4),
        "relu",
        True,
    ),
    "efficientnet_b0": (partial(EfficientNet, variant="b0"), "silu", True),
    "efficientnet_b2": (partial(EfficientNet, variant="b2"), "silu", True),
    "efficientnet_b0_g16": (
        partial(EfficientNet, variant="b0", group_size=16, expansion=4),
        "silu",
        True,
    ),
    "efficientnet_b2_g16": (
        partial(EfficientNet, variant="b2", group_size=16, expansion=4),
        "silu",
        True,
    ),
    "random_net": (RandomNet, "relu", False),
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return list(_MODELS)


def create_model(
    name: str,
    norm: str | NormSpec = "gn+pn",
    num_classes: int | None = None,
    groups: int | None = None,
    act: Activation = None,
    proxy_affine: bool = True,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a model with every norm-act step from one norm spec.

    Args:
        name: one of :func:`list_models` (CIFAR ``resnet20..110``; ImageNet ``resnet50/101``,
            ``resnext50_32x4d``, ``resnext101_32x4d``; ``efficientnet_b0/b2[_g16]``;
            ``random_net``).
        norm: norm spec, e.g. ``"bn"``, ``"gn"``, ``"gn+pn"``, ``"ln+pn"``, ``"gn+ws"``.
        num_classes: classifier outputs (default 10 for CIFAR ResNets, 1000 otherwise).
        groups: GN/Evo-S0 groups (``None``: 8 with PN, 32 without).
        act: activation φ (default ReLU for ResNets and random nets, swish for EfficientNets).
        proxy_affine: learn PN's β~, γ~.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth rate of the last block (linear in block index).
        pretrained: load the weights shipped in ``proxynorm/pretrained/`` for this model and
            norm (:mod:`proxynorm.models.pretrained`; ``model.pretrained`` says where they come
            from). The architecture is the one they were trained with: other arguments must be
            left out or equal to it.
        **kwargs: norm options (``eps``, ``momentum``, ``norm_batch``, ``n_samples``,
            ``proxy_eps``, ``group_size``) and model options (``in_chans``, ``width_mult``;
            for ``random_net``: ``depth``, ``width``, ``kernel_size``, ``gamma_std``,
            ``beta_std``, ``first_stride``, ``seed``).

    Raises:
        ValueError: unknown model or norm (the message lists the valid names).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_MODELS)}")
    builder, default_act, has_classifier = _MODELS[key]
    if pretrained:
        given = {"num_classes": num_classes, "groups": groups, "act": act,
                 "proxy_affine": proxy_affine, "drop_rate": drop_rate,
                 "drop_path_rate": drop_path_rate, **kwargs}  # fmt: skip
        return _pretrained(key, norm, given)
    _check_sizes(num_classes=num_classes, **kwargs)
    config = {
        "name": key,
        "norm": str(norm),
        "num_classes": num_classes,
        "groups": groups,
        "act": act,
        "proxy_affine": proxy_affine,
        "drop_rate": drop_rate,
        "drop_path_rate": drop_path_rate,
        **kwargs,
    }
    norm_kwargs = {k: kwargs.pop(k) for k in NORM_KWARGS if k in kwargs}
    f = LayerFactory.create(norm, act or default_act, groups, proxy_affine, **norm_kwargs)
    if has_classifier:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        kwargs.update(drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    elif num_classes is not None or drop_rate or drop_path_rate:
        raise ValueError(
            f"{name} has no classifier or residual blocks: num_classes, drop_rate "
            "and drop_path_rate do not apply"
        )
    model = builder(f, **kwargs)
    model.norm_spec = f.spec
    model.config = config  # create_model(**model.config) rebuilds the architecture
    return model


def _check_sizes(**kwargs: Any) -> None:
    """Counts must be ints >= 1 and ``width_mult`` > 0 (a clear error instead of an index error
    or a zero-channel layer deep inside a builder)."""
    for name in ("num_classes", "in_chans", "depth", "width", "kernel_size"):
        value = kwargs.get(name)
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and bad:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    width = kwargs.get("width_mult")
    if width is not None and not (isinstance(width, int | float) and width > 0):
        raise ValueError(f"width_mult must be a number > 0, got {width!r}")


_DEFAULTS = {"num_classes": None, "groups": None, "act": None, "proxy_affine": True,
             "drop_rate": 0.0, "drop_path_rate": 0.0}  # fmt: skip


def _pretrained(name: str, norm: str | NormSpec, given: dict[str, Any]) -> nn.Module:
    """The shipped model ``name``/``norm`` with its weights; ``given`` arguments must agree with
    the configuration it was trained with."""
    from proxynorm.layers import parse_spec

    found = pretrained.entry(name, parse_spec(norm).name)
    config = found["config"]
    conflicts = [f"{k}={v!r} (trained with {config.get(k)!r})" for k, v in given.items()
                 if v != _DEFAULTS.get(k, object()) and v != config.get(k)]  # fmt: skip
    if conflicts:
        raise ValueError(f"pretrained {name}/{parse_spec(norm).name}: {', '.join(conflicts)}")
    return pretrained.load_weights(create_model(**config), found)
