"""Inference folding of proxy-normalized activations (Labatie et al., NeurIPS 2021, Eq. 7).

:func:`fold` returns an eval-mode copy of a model in which every
:class:`~proxynorm.layers.ProxyNormAct` is replaced by its fixed per-channel form
:class:`~proxynorm.layers.pn.folded.FoldedProxyAct` (``φ(a y + b) · s + t``; with ReLU the
scale is inside the affine, which the norm's native kernel applies). Where the graph allows (the
layer's output reaches a ``Linear`` or an unpadded ``Conv2d`` only through average pooling,
flatten or dropout), the shift ``t`` is folded into that layer's bias as well.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from proxynorm.layers import NormAct, ProxyNormAct
from proxynorm.layers.pn.folded import FoldedProxyAct

# Ops through which a per-channel constant shift passes unchanged (eval mode).
# Max pooling pads with -inf, so it commutes with a per-channel shift and positive scale exactly.
_PASS_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.MaxPool2d, nn.Dropout, nn.Flatten,
                 nn.Identity)  # fmt: skip
_PASS_FUNCTIONS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.max_pool2d, torch.flatten,
                   F.dropout)  # fmt: skip
_PASS_METHODS = ("flatten", "mean")


@dataclass
class FoldReport:
    folded: list[str] = field(default_factory=list)  # ProxyNormAct -> FoldedProxyAct
    shifts_into: list[str] = field(default_factory=list)  # "layer -> conv/linear"

    def __str__(self) -> str:
        return (
            f"{len(self.folded)} proxy-normalized activations folded; "
            f"{len(self.shifts_into)} shifts folded into the next layer"
            + "".join(f"\n  {s}" for s in self.shifts_into)
        )


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, NormAct | FoldedProxyAct) or super().is_leaf_module(m, qualname)


def _replace(module: nn.Module, prefix: str, report: FoldReport) -> None:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, ProxyNormAct):
            setattr(module, name, FoldedProxyAct.from_proxy(child))
            report.folded.append(path)
        else:
            _replace(child, path + ".", report)


def passes_shift(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` passes a per-channel constant shift (and positive scale) through
    unchanged (eval mode): adaptive average pooling, max pooling, flatten, dropout, identity."""
    if node.op == "call_module":
        return isinstance(modules[node.target], _PASS_MODULES)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return (
        node.op == "call_method"
        and node.target in _PASS_METHODS
        and (
            node.target != "mean"
            or node.args[1:] in (((2, 3),), ([2, 3],), ((-2, -1),), ([-2, -1],))
        )
    )


@torch.no_grad()
def _add_to_bias(layer: nn.Module, shift: torch.Tensor) -> None:
    if isinstance(layer, nn.Linear):
        extra = layer.weight @ shift.to(layer.weight.dtype)
    else:  # unpadded conv: every tap sees shifted inputs
        k = layer.weight.shape[2:]
        const = shift.to(layer.weight.dtype).view(1, -1, 1, 1).expand(1, -1, *k)
        extra = F.conv2d(const, layer.weight, groups=layer.groups).flatten()
    if layer.bias is None:
        layer.bias = nn.Parameter(extra.clone())
    else:
        layer.bias.add_(extra)


def fold(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """An eval-mode copy of ``model`` with PN folded for inference (see the module docstring).

    Returns:
        ``(folded, report)``; ``folded`` matches ``model.eval()`` up to float rounding and contains
        no :class:`ProxyNormAct`.
    """
    folded = copy.deepcopy(model).eval()
    report = FoldReport()
    _replace(folded, "", report)
    try:
        graph = _Tracer().trace(folded)
    except Exception:  # untraceable model: the per-layer folding above still holds
        return folded, report
    modules = dict(folded.named_modules())
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], NormAct):
            continue
        act = modules[node.target].act
        if not isinstance(act, FoldedProxyAct):
            continue
        cur = node
        while len(cur.users) == 1 and passes_shift(next(iter(cur.users)), modules):
            cur = next(iter(cur.users))
        users = list(cur.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        target = modules[users[0].target]
        unpadded = isinstance(target, nn.Conv2d) and all(p == 0 for p in target.padding)
        if (isinstance(target, nn.Linear) or unpadded) and target.weight.shape[1] * getattr(
            target, "groups", 1
        ) == act.shift.numel():
            _add_to_bias(target, act.shift)
            act.shift.zero_()
            report.shifts_into.append(f"{node.target} -> {users[0].target}")
    return folded, report
