"""torch.fx for conversion and diagnosis: tracing a model only where it holds a BatchNorm, and
reading which activation a graph node applies.

Modules that hold no BatchNorm are leaves, so their buffers are never frozen into constants and
their train/eval behaviour stays their own (docs/CONVERSION.md); this package's norm-act layers
and BN-like modules (BatchNorm, frozen BN) are leaves too.
"""

from __future__ import annotations

from torch import Tensor, fx, nn

from proxynorm.layers import BatchNormAct2d, NormAct
from proxynorm.layers.activation import Act, act_from_call, get_act


def is_bn_like(m: nn.Module) -> bool:
    """A BatchNorm, or a frozen BN-like module: no children, and 1-D tensors ``weight``,
    ``bias``, ``running_mean``, ``running_var`` of one length (torchvision's and detectron2's
    ``FrozenBatchNorm2d``; this package's norm-act layers are not BN-like)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return True
    if isinstance(m, NormAct) or any(True for _ in m.children()):
        return False
    tensors = [getattr(m, k, None) for k in ("weight", "bias", "running_mean", "running_var")]
    return all(isinstance(t, Tensor) and t.dim() == 1 for t in tensors) and (
        len({t.numel() for t in tensors}) == 1
    )


class HolderTracer(fx.Tracer):
    """Traces only into modules that hold a BatchNorm (to pair each BN with its activation);
    every other module, this package's norm-act layers and BN-like modules are leaves."""

    def __init__(self, holders: set[nn.Module]) -> None:
        super().__init__()
        self.holders = holders  # modules with a BN-like module below them

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, NormAct) or is_bn_like(m):
            return True
        return m not in self.holders or super().is_leaf_module(m, qualname)


def bn_holders(model: nn.Module) -> set[nn.Module]:
    holders: set[nn.Module] = set()

    def visit(m: nn.Module) -> bool:
        below = [visit(c) for c in m.children()]  # visit every child
        holds = any(below) or (m is not model and (is_bn_like(m) or isinstance(m, BatchNormAct2d)))
        if any(below):
            holders.add(m)
        return holds

    visit(model)
    holders.add(model)
    return holders


def activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> Act | nn.Module | None:
    """The activation ``node`` applies to its first argument (a canonical :class:`Act`, or an
    activation module the registry does not know), else ``None``."""
    if node.op == "call_module":
        act = get_act(modules[node.target])  # known classes, or a stateless module's values
        return None if act is None or act.name == "identity" else act
    if node.op in ("call_function", "call_method") and node.args:
        act = act_from_call(node.target, node.args, node.kwargs, node.op == "call_method")
        return None if act is None or act.name == "identity" else act
    return None


def trace_holders(model: nn.Module, training: bool) -> fx.Graph:
    modes = {m: m.training for m in model.modules()}
    model.train(training)
    try:
        return HolderTracer(bn_holders(model)).trace(model)
    finally:
        for m, mode in modes.items():
            m.training = mode
