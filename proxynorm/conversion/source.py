"""Where a converted model comes from, so that a saved one can be rebuilt: the source model
(a :func:`proxynorm.models.create_model` config, or a torchvision / timm name) converted again."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from proxynorm.conversion.rewrite import convert


def build_source(source: dict[str, Any]) -> nn.Module:
    """The model a conversion started from: ``{"torchvision": name, "kwargs": {...}}``,
    ``{"timm": name, "kwargs": {...}}`` or :func:`proxynorm.models.create_model` arguments."""
    kwargs = source.get("kwargs", {})
    if "torchvision" in source:
        import torchvision

        return torchvision.models.get_model(source["torchvision"], weights=None, **kwargs)
    if "timm" in source:
        import timm

        return timm.create_model(source["timm"], pretrained=False, **kwargs)
    from proxynorm.models import create_model

    return create_model(**source)


def rebuild(config: dict[str, Any]) -> fx.GraphModule:
    """The architecture of a converted model from its ``config`` (as saved by
    :func:`proxynorm.checkpoint.save_model`): the source model converted again, with the biases that
    calibration added, ready for ``load_state_dict``."""
    source = build_source(config["source"])
    settings = {k: v for k, v in config["convert"].items() if v is not None}
    gm, _ = convert(source, **settings)
    for name in config.get("biased", []):
        conv = gm.get_submodule(name)
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels if hasattr(conv, "out_channels")
                                             else conv.out_features))  # fmt: skip
    gm.config = config
    return gm
