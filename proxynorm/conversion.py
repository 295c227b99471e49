"""BatchNorm → batch-independent norm-act conversion of existing models (torch.fx).

Labatie et al., NeurIPS 2021, §5: "replace BN steps with GN/LN steps and activation steps with
proxy-normalized activation steps". :func:`convert` does it on a symbolically traced copy of a
model:

* a BatchNorm whose only user is an activation becomes the spec's norm-act layer (for a ``+pn``
  spec: the norm without affine, then :class:`~proxynorm.layers.ProxyNormAct`), with the BN's γ, β
  as its initialization, and the activation node disappears;
* any other BatchNorm (e.g. before a residual add) becomes the spec's norm with its affine and no
  activation (``apply_act=False``: exactly the plain norm);
* this package's own norm-act layers built with ``bn`` (``BatchNormAct2d``) are converted whole;
* activations not directly preceded by a norm, and other norms, are left alone and reported.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from proxynorm.layers import BatchNormAct2d, NormAct, norm_act, parse_spec

# Activation modules / functions -> names known to the factory (others are passed as callables).
_ACT_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.SiLU: "silu",
}
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    F.silu: "silu",
    F.gelu: "gelu",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}


@dataclass
class ConversionReport:
    """What :func:`convert` did."""

    with_act: list[str] = field(default_factory=list)  # BN + activation -> norm-act (PN)
    without_act: list[str] = field(default_factory=list)  # BN -> norm with affine
    left: list[str] = field(default_factory=list)  # "name: why"

    def __str__(self) -> str:
        lines = [
            f"{len(self.with_act)} BatchNorm + activation -> norm-act step",
            f"{len(self.without_act)} BatchNorm without activation -> norm with affine",
            f"{len(self.left)} left alone:",
        ]
        return "\n".join(lines + [f"  {why}" for why in self.left])


class _Tracer(fx.Tracer):
    """Keeps this package's norm-act layers and timm-style BN+act modules as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, NormAct | nn.modules.batchnorm._BatchNorm) or super().is_leaf_module(
            m, qualname
        )


def _module_activation(m: nn.Module) -> str | nn.Module | None:
    """A factory name for a known activation module, the module itself for other activations,
    else ``None``."""
    if type(m) in _ACT_MODULES:
        return _ACT_MODULES[type(m)]
    if isinstance(m, nn.GELU) and m.approximate == "none":
        return "gelu"
    if isinstance(m, nn.ReLU6 | nn.Hardswish | nn.Mish | nn.LeakyReLU | nn.ELU | nn.GELU):
        return m
    return None


def _activation(node: fx.Node, modules: dict[str, nn.Module]) -> str | nn.Module | None:
    """The activation ``node`` applies (a factory name, or the module itself), else ``None``."""
    if node.op == "call_module":
        return _module_activation(modules[node.target])
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        if node.target is F.gelu and node.kwargs.get("approximate", "none") != "none":
            return None
        return _ACT_FUNCTIONS[node.target]
    if node.op == "call_method" and node.target in _ACT_METHODS:
        return _ACT_METHODS[node.target]
    return None


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _carry_affine(new: nn.Module, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    with torch.no_grad():
        if weight is not None and getattr(new, "weight", None) is not None:
            new.weight.copy_(weight)
        if bias is not None and getattr(new, "bias", None) is not None:
            new.bias.copy_(bias)


def convert(
    model: nn.Module,
    norm: str = "gn+pn",
    groups: int | None = None,
    group_size: int | None = None,
    act: Any = None,
    **norm_kwargs: Any,
) -> tuple[fx.GraphModule, ConversionReport]:
    """Replace the BatchNorms of ``model`` by ``norm``'s layers (see the module docstring).

    Args:
        model: any model torch.fx can trace (the original is not modified).
        norm: a batch-independent spec: ``gn+pn`` (default), ``ln+pn``, ``gn``, ``ln``...
        groups, group_size: GroupNorm grouping (see :func:`proxynorm.layers.norm_act`).
        act: override the activation of converted norm-act layers (default: the one found).
        **norm_kwargs: other options of the norm-act layers (``proxy_eps``, ``n_samples``...).

    Returns:
        ``(converted, report)``: a :class:`torch.fx.GraphModule` in the same train/eval mode,
        on the same device and dtype, and what was converted or left.

    Raises:
        ValueError: a batch-dependent target spec, or an unknown spec.
    """
    spec = parse_spec(norm)
    if spec.batch_dependent:
        raise ValueError(f"norm must be batch independent, got {norm!r}")
    kw = dict(norm_kwargs)
    if spec.base in ("gn", "evos0"):
        kw.update(groups=groups, group_size=group_size)
    gm = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    gm.train(model.training)
    modules = dict(gm.named_modules())
    report = ConversionReport()

    def replace(target: str, bn: nn.Module, activation) -> None:
        """Put the spec's layer (with ``activation``, or the plain norm for ``None``) in place of
        the BN module at ``target``, carrying its γ, β, device, dtype and mode."""
        param = next(bn.parameters(), None)
        param = param if param is not None else next(bn.buffers())
        layer = norm_act(
            spec,
            bn.num_features,
            activation if activation is not None else "relu",
            apply_act=activation is not None,
            **kw,
        )
        layer = layer.to(device=param.device, dtype=param.dtype).train(bn.training)
        _carry_affine(layer, bn.weight, bn.bias)
        _set_module(gm, target, layer)

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, BatchNormAct2d):  # this package's own BN norm-act layers
            replace(node.target, m, (act or m.act.act_fn) if m.apply_act else None)
            (report.with_act if m.apply_act else report.without_act).append(node.target)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            inner = getattr(m, "act", None)  # timm's BatchNormAct2d: BN + act in one module
            if isinstance(inner, nn.Module) and not isinstance(inner, nn.Identity):
                replace(node.target, m, act or _module_activation(inner) or inner)
                report.with_act.append(node.target)
                continue
            # Look through no-op modules (timm's drop_block / drop_path at rate 0 are Identity).
            last, users = node, list(node.users)
            while len(users) == 1 and _is_identity(users[0], modules):
                last, users = users[0], list(users[0].users)
            found = _activation(users[0], modules) if len(users) == 1 else None
            if found is not None and users[0].args[0] is last:
                replace(node.target, m, act or found)
                users[0].replace_all_uses_with(last)
                gm.graph.erase_node(users[0])
                report.with_act.append(node.target)
            else:
                replace(node.target, m, None)
                why = "several users" if len(users) > 1 else _describe(users, modules)
                report.without_act.append(f"{node.target} (followed by {why})")
    for node in gm.graph.nodes:
        found = _activation(node, modules)
        if found is not None:
            src = node.args[0] if node.args else None
            what = _describe([src], modules) if isinstance(src, fx.Node) else "?"
            report.left.append(f"{_name(node)}: activation after {what}, not after a norm")
        elif node.op == "call_module" and isinstance(
            modules.get(node.target), nn.GroupNorm | nn.LayerNorm | nn.InstanceNorm2d
        ):
            report.left.append(f"{node.target}: already batch independent")
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, report


def _is_identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], nn.Identity)


def _name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _describe(nodes: list, modules: dict[str, nn.Module]) -> str:
    if not nodes or nodes[0] is None:
        return "nothing (output)"
    n = nodes[0]
    if n.op == "call_module":
        return f"{type(modules[n.target]).__name__} {n.target}"
    if n.op == "call_function":
        if n.target in (operator.add, torch.add, operator.iadd):
            return "an add"
        return getattr(n.target, "__name__", str(n.target))
    if n.op == "output":
        return "the output"
    return f"{n.op} {n.target}"
