"""The normalization layers of any model, what kind each is, and its ``y``.

One enumeration for every analysis (probes, power plots, ``diagnose``): this package's norm-act
layers, EvoNorm-S0 and FRN, PyTorch's BatchNorm, GroupNorm and InstanceNorm, frozen BN of
torchvision and timm, and timm's channels-first ``LayerNorm2d``. ``y`` is the layer's normalized
pre-activation *before* its affine (Labatie et al., NeurIPS 2021, §3; docs/METHOD.md §3): this
package's layers expose it as the norm step's output; for the others :func:`standardized`
recomputes it from the layer's input with the statistics the layer uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proxynorm.conversion.fx import is_bn_like
from proxynorm.layers import BatchNormStep, EvoNormS0, FilterResponseNormTLU, NormAct, is_norm_act


def kind(m: nn.Module) -> str | None:
    """What kind of normalization ``m`` is (``bn``, ``frozen bn``, ``gn``, ``ln``, ``in``,
    ``ln2d``, ``evos0``, ``frn``, with ``+pn`` for proxy-normalized steps), or ``None``."""
    if isinstance(m, NormAct):
        if isinstance(m.norm, BatchNormStep):
            base = "bn"
        else:
            g, c = getattr(m.norm, "groups", 0), m.num_features
            base = "ln" if g == 1 else "in" if g == c else "gn"
        return base + ("+pn" if m.proxy else "")
    if isinstance(m, EvoNormS0):
        return "evos0"
    if isinstance(m, FilterResponseNormTLU):
        return "frn"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn"
    if is_bn_like(m):
        return "frozen bn"
    if isinstance(m, nn.GroupNorm):
        return "ln" if m.num_groups == 1 else "in" if m.num_groups == m.num_channels else "gn"
    if isinstance(m, nn.InstanceNorm2d):
        return "in"
    if type(m).__name__ == "LayerNorm2d":  # timm's channels-first LayerNorm over C
        return "ln2d"
    return None


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every normalization layer of ``model`` with its name, in registration order (the depth
    order of this package's models); the outermost module (a norm-act layer, not its norm step)."""
    found, skip = [], set()
    for name, m in model.named_modules():
        if id(m) in skip:
            continue
        if kind(m) is not None:
            found.append((name, m))
            skip.update(id(c) for c in m.modules())
    return found


def norm_act_steps(model: nn.Module) -> list[nn.Module]:
    """The layers of the paper's analysis, in depth order: the normalization layers of
    :func:`norm_layers`, less this package's norm-act layers that apply no activation
    (``apply_act=False``: a plain norm whose output is not a layer ``l`` of the paper)."""
    return [
        m
        for _, m in norm_layers(model)
        if not isinstance(m, (NormAct, EvoNormS0, FilterResponseNormTLU)) or is_norm_act(m)
    ]


def standardized(m: nn.Module, x: Tensor, batch_stats: bool | None = None) -> Tensor:
    """``y``: ``x`` standardized as the normalization layer ``m`` does it, without its affine,
    in ``x``'s dtype.

    Args:
        m: a layer of :func:`norm_layers` that is not one of this package's norm-act layers
            (whose norm step outputs ``y`` directly).
        x: the layer's input.
        batch_stats: for BN-like layers, standardize with the batch's statistics instead of the
            running ones (default: ``m.training``; always where there are no running statistics).

    Raises:
        TypeError: ``m`` is not a normalization layer this function knows.
    """
    if isinstance(m, NormAct):
        return m.norm(x)
    if isinstance(m, (EvoNormS0, FilterResponseNormTLU)):
        return m.standardize(x)
    if isinstance(m, nn.GroupNorm):
        return F.group_norm(x, m.num_groups, None, None, m.eps)
    if isinstance(m, nn.InstanceNorm2d):
        return F.instance_norm(x, eps=m.eps)
    if type(m).__name__ == "LayerNorm2d":
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        return (x - mean) / torch.sqrt(var + m.eps)
    if kind(m) not in ("bn", "frozen bn"):
        raise TypeError(f"cannot standardize for {type(m).__name__}: not a normalization layer")
    batch_stats = getattr(m, "training", False) if batch_stats is None else batch_stats
    if batch_stats or getattr(m, "running_mean", None) is None:
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], keepdim=True, correction=0)
    else:
        shape = (1, -1, *[1] * (x.dim() - 2))
        mean = m.running_mean.to(x.dtype).view(shape)
        var = m.running_var.to(x.dtype).view(shape)
    return (x - mean) / torch.sqrt(var + getattr(m, "eps", 1e-5))


__all__ = ["kind", "norm_act_steps", "norm_layers", "standardized"]
