"""BatchNorm → batch-independent norm-act conversion of existing models (torch.fx).

Labatie et al., NeurIPS 2021, §5: "replace BN steps with GN/LN steps and activation steps with
proxy-normalized activation steps". :func:`convert` does it on a symbolically traced copy of a
model:

* a BatchNorm whose only user is an activation becomes the spec's norm-act layer (for a ``+pn``
  spec: the norm without affine, then :class:`~proxynorm.layers.ProxyNormAct`), with the BN's γ, β
  as its initialization, and the activation node disappears;
* any other BatchNorm (e.g. before a residual add) becomes the spec's norm with its affine and no
  activation (``apply_act=False``: exactly the plain norm);
* BN-like frozen modules (torchvision's ``FrozenBatchNorm2d``, detectron2's: fixed ``weight``,
  ``bias``, ``running_mean``, ``running_var``) are converted like BN; this package's
  ``BatchNormAct2d`` and timm's (BN + act in one module) are converted whole;
* activations not directly preceded by a norm, and other norms, are left alone and reported.

What the copy keeps of the original, by construction:

* Modules that hold no BatchNorm are not traced into (they stay whole, as leaves), so their
  buffers are never frozen into constants and their train/eval behaviour (dropout, stochastic
  depth, DropPath) is their own.
* The model is traced in train and in eval mode. Where the two graphs differ only in a boolean
  that follows the mode (``F.dropout(x, p, training=self.training)`` in a traced ``forward``), the
  converted graph reads the owning module's ``training`` flag at run time; any other difference
  is refused with the module's name.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from proxynorm.conversion.fx import activation_of, is_bn_like, trace_holders
from proxynorm.layers import BatchNormAct2d, NormSpec, norm_act, parse_spec
from proxynorm.layers.activation import get_act


@dataclass
class ConversionReport:
    """What :func:`convert` did."""

    with_act: list[str] = field(default_factory=list)  # BN + activation -> norm-act (PN)
    without_act: list[str] = field(default_factory=list)  # BN -> norm with affine
    left: list[str] = field(default_factory=list)  # "name: why"
    regrouped: list[str] = field(default_factory=list)  # "name: C channels, G groups (why)"
    mode_dependent: list[str] = field(default_factory=list)  # calls that follow .train()/.eval()
    calibration: Any = None  # a CalibrationReport when convert(..., calibrate=...) was used
    reconstruction: Any = None  # a ReconstructionReport when reconstruct_steps/distill_steps

    @property
    def converted(self) -> list[str]:
        """Names of the converted layers (also the names of the BN modules they replaced)."""
        return [n.split(" ")[0] for n in self.with_act + self.without_act]

    def __str__(self) -> str:
        lines = [
            f"{len(self.with_act)} BatchNorm + activation -> norm-act step",
            f"{len(self.without_act)} BatchNorm without activation -> norm with affine",
        ]
        if self.regrouped:
            lines.append(f"{len(self.regrouped)} with other groups than asked:")
            lines += [f"  {r}" for r in self.regrouped]
        if self.mode_dependent:
            lines.append(f"{len(self.mode_dependent)} calls follow the train/eval mode:")
            lines += [f"  {m}" for m in self.mode_dependent]
        lines.append(f"{len(self.left)} left alone:")
        lines += [f"  {why}" for why in self.left]
        if self.calibration is not None:
            lines.append(str(self.calibration))
        if self.reconstruction is not None:
            lines.append(str(self.reconstruction))
        return "\n".join(lines)


class TrainingFlag(nn.Module):
    """Returns its own ``training`` flag, which ``.train()``/``.eval()`` of its parent set: the
    converted graph's run-time view of a module's mode."""

    def forward(self) -> bool:
        return self.training


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _mode_differences(train: fx.Graph, evaluation: fx.Graph) -> list[tuple[fx.Node, Any]]:
    """``(node of train, key)`` for every argument that is ``True`` in the train-mode graph and
    ``False`` in the eval-mode graph (``key``: an int for args, a str for kwargs).

    Raises:
        ValueError: the graphs differ otherwise (the module whose code differs is named).
    """
    tn, en = list(train.nodes), list(evaluation.nodes)
    index = {n: i for i, n in enumerate(tn)} | {n: i for i, n in enumerate(en)}

    def norm(v):
        return ("node", index[v]) if isinstance(v, fx.Node) else v

    found = []
    for i, (a, b) in enumerate(zip(tn, en, strict=False)):
        same = a.op == b.op and a.target == b.target and len(a.args) == len(b.args)
        same = same and a.kwargs.keys() == b.kwargs.keys()
        pairs = list(zip(range(len(a.args)), a.args, b.args, strict=False)) if same else []
        pairs += [(k, a.kwargs[k], b.kwargs[k]) for k in a.kwargs] if same else []
        for key, x, y in pairs:
            if x is True and y is False:
                found.append((a, key))
            elif fx.node.map_aggregate(x, norm) != fx.node.map_aggregate(y, norm):
                same = False
        if not same:
            where = _owner(a) or _owner(b) or "the model's own forward"
            raise ValueError(
                f"cannot convert: {where} computes differently in train and eval mode beyond a "
                f"dropout-style flag (traced graphs differ at {a.format_node()} vs "
                f"{b.format_node()}, node {i}); put that code in a module without BatchNorm"
            )
    if len(tn) != len(en):
        raise ValueError("cannot convert: the train- and eval-mode graphs differ in length")
    return found


def _follow_mode(gm: fx.GraphModule, diffs: list[tuple[fx.Node, Any]], report) -> None:
    """Replace each mode-following boolean by a :class:`TrainingFlag` of its owner module."""
    flags: dict[str, fx.Node] = {}
    for node, key in diffs:
        owner = _owner(node)
        if owner not in flags:  # diffs come in graph order: the flag precedes every use
            path = f"{owner}._training_flag" if owner else "_training_flag"
            gm.add_submodule(path, TrainingFlag())
            with gm.graph.inserting_before(node):
                flags[owner] = gm.graph.call_module(path)
        if isinstance(key, int):
            node.args = (*node.args[:key], flags[owner], *node.args[key + 1 :])
        else:
            node.kwargs = {**node.kwargs, key: flags[owner]}
        name = getattr(node.target, "__name__", str(node.target))
        report.mode_dependent.append(f"{node.name} ({name} in {owner or 'the model'})")


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _carry_affine(new: nn.Module, weight: Tensor | None, bias: Tensor | None) -> None:
    with torch.no_grad():
        if weight is not None and getattr(new, "weight", None) is not None:
            new.weight.copy_(weight)
        if bias is not None and getattr(new, "bias", None) is not None:
            new.bias.copy_(bias)


def nearest_divisor(n: int, k: int) -> int:
    """The divisor of ``n`` closest to ``k`` (the smaller one on a tie)."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - k), d))


def _grouping(c: int, groups: int | None, group_size: int | None) -> tuple[dict, str | None]:
    """Per-layer GroupNorm arguments for ``c`` channels, and why they differ from those asked
    (``None`` when they do not): an explicit value that does not divide ``c`` falls back to the
    nearest one that does."""
    if groups is not None and group_size is None and c % groups:
        g = nearest_divisor(c, groups)
        return {"groups": g}, f"{c} channels, {g} groups ({groups} does not divide {c})"
    if group_size is not None and groups is None and c % group_size:
        s = nearest_divisor(c, group_size)
        return {"group_size": s}, (
            f"{c} channels, group size {s} ({group_size} does not divide {c})"
        )
    return {"groups": groups, "group_size": group_size}, None


def convert(
    model: nn.Module,
    norm: str = "gn+pn",
    groups: int | None = None,
    group_size: int | None = None,
    act: Any = None,
    calibrate: Tensor | Iterable | None = None,
    reconstruct_steps: int = 0,
    distill_steps: int = 0,
    seed: int = 0,
    **norm_kwargs: Any,
) -> tuple[fx.GraphModule, ConversionReport]:
    """Replace the BatchNorms of ``model`` by ``norm``'s layers (see the module docstring).

    Args:
        model: any model torch.fx can trace where it holds BatchNorms (it is copied first and
            never modified).
        norm: a batch-independent spec: ``gn+pn`` (default), ``ln+pn``, ``gn``, ``ln``...
        groups, group_size: GroupNorm grouping (see :func:`proxynorm.layers.norm_act`). A layer
            whose channel count the value does not divide gets the nearest divisor instead
            (listed in ``report.regrouped``).
        act: override the activation of converted norm-act layers (default: the one found).
        calibrate: input batches (a tensor, or an iterable of tensors or ``(x, y)`` pairs): set
            the converted layers' parameters, and refit the convolutions that read them, so that
            the converted model reproduces ``model``'s activations in eval mode
            (:mod:`proxynorm.conversion.calibrate`; the fit is in ``report.calibration``).
            Only the images are read (labels of ``(x, y)`` pairs are ignored).
        reconstruct_steps: after the calibration, optimizer steps per residual block that
            reproduce the BN model's block outputs on the ``calibrate`` images
            (:mod:`proxynorm.conversion.reconstruct`; ``report.reconstruction``); 0: none.
        distill_steps: then, steps of whole-model distillation of the BN model's outputs.
        seed: seeds the reconstruction's mini-batch draws.
        **norm_kwargs: other options of the norm-act layers (``proxy_eps``, ``n_samples``...).

    Returns:
        ``(converted, report)``: a :class:`torch.fx.GraphModule` in the same train/eval mode
        (each module's own), on the same device and dtype, that behaves under ``.train()`` and
        ``.eval()`` as the original does; and what was converted or left.

    Raises:
        ValueError: a batch-dependent target spec, an unknown spec, a layer that cannot be built
            (the message names it), train/eval behaviour that conversion cannot keep, or
            ``calibrate`` given for a model in which nothing was converted.
    """
    spec = _target_spec(norm, groups, group_size)
    report = ConversionReport()
    gm = _traced_copy(model, report)
    layer = functools.partial(_norm_act_for, spec=spec, groups=groups, group_size=group_size,
                              norm_kwargs=norm_kwargs, report=report)  # fmt: skip
    _rewrite(gm, layer, act, report)
    source = getattr(model, "config", None)
    if isinstance(source, dict):  # a rebuildable model: the converted one can be saved too
        settings = {"norm": spec.name, "groups": groups, "group_size": group_size,
                    "act": act if isinstance(act, str) else None, **norm_kwargs}  # fmt: skip
        gm.config = {"source": source, "convert": settings, "biased": []}
    if calibrate is not None:
        if not report.converted:
            raise ValueError(
                "calibrate: nothing was converted (the model has no BatchNorm or frozen BN), so "
                "there is nothing to calibrate"
            )
        from proxynorm.conversion.calibrate import calibrate as run_calibration
        from proxynorm.conversion.calibrate import input_batches
        from proxynorm.conversion.reconstruct import reconstruct

        calibrate = input_batches(calibrate)  # read once: a loader may be a one-pass iterator
        report.calibration = run_calibration(gm, model, report.converted, calibrate)
        if hasattr(gm, "config"):
            gm.config["biased"] = list(report.calibration.biased)
        if reconstruct_steps or distill_steps:
            report.reconstruction = reconstruct(gm, model, report.converted, calibrate,
                                                steps=reconstruct_steps, seed=seed,
                                                distill_steps=distill_steps)  # fmt: skip
    elif reconstruct_steps or distill_steps:
        raise ValueError("reconstruct_steps/distill_steps need calibrate= images")
    return gm, report


def _target_spec(norm: str, groups: int | None, group_size: int | None) -> NormSpec:
    """The parsed target spec, checked: batch independent, grouping only where it applies."""
    spec = parse_spec(norm)
    if spec.batch_dependent:
        raise ValueError(f"norm must be batch independent, got {norm!r}")
    if not spec.applies("groups") and (groups is not None or group_size is not None):
        raise ValueError(f"groups/group_size apply to gn and evos0 only, not to {spec.name!r}")
    for name, value in (("groups", groups), ("group_size", group_size)):
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and bad:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return spec


def _traced_copy(model: nn.Module, report: ConversionReport) -> fx.GraphModule:
    """A traced copy of ``model`` (traced in training and in eval mode, so that flags that
    follow the mode stay dynamic), each module in its original's mode."""
    model = copy.deepcopy(model)
    graph = trace_holders(model, training=True)
    diffs = _mode_differences(graph, trace_holders(model, training=False))
    gm = fx.GraphModule(model, graph, type(model).__name__)
    copied = dict(gm.named_modules())
    for name, m in model.named_modules():  # containers copied by fx take their module's mode
        if name in copied:
            copied[name].training = m.training
    _follow_mode(gm, diffs, report)
    return gm


def _norm_act_for(
    target: str, bn: nn.Module, activation: Any, *, spec: NormSpec, groups: int | None,
    group_size: int | None, norm_kwargs: dict[str, Any], report: ConversionReport,
) -> nn.Module:  # fmt: skip
    """The spec's layer to put in place of the BN-like module ``bn`` at ``target`` (with
    ``activation``, or the plain norm for ``None``), carrying its γ, β, device, dtype and mode."""
    tensors = [t for t in (*bn.parameters(), *bn.buffers()) if t.is_floating_point()]
    ref = tensors[0] if tensors else torch.empty(0)
    c = getattr(bn, "num_features", None) or bn.weight.numel()
    kw = dict(norm_kwargs)
    if spec.applies("groups"):
        g, why = _grouping(c, groups, group_size)
        kw.update(g)
        if why:
            report.regrouped.append(f"{target}: {why}")
    try:
        layer = norm_act(spec, c, activation if activation is not None else "relu",
                         apply_act=activation is not None, **kw)  # fmt: skip
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot convert {target} ({type(bn).__name__}({c})): {err}") from err
    layer = layer.to(device=ref.device, dtype=ref.dtype).train(bn.training)
    _carry_affine(layer, getattr(bn, "weight", None), getattr(bn, "bias", None))
    return layer


def _rewrite(gm: fx.GraphModule, layer: Callable, act: Any, report: ConversionReport) -> None:
    """Replace every BN-like module of ``gm`` by ``layer(target, bn, activation)``, fusing the
    activation that follows it where there is exactly one; then tidy the graph."""
    modules = dict(gm.named_modules())

    def replace(target: str, bn: nn.Module, activation: Any) -> None:
        _set_module(gm, target, layer(target, bn, activation))

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        m = modules[node.target]
        if isinstance(m, BatchNormAct2d):  # this package's own BN norm-act layers
            replace(node.target, m, (act or m.act.act_fn) if m.apply_act else None)
            (report.with_act if m.apply_act else report.without_act).append(node.target)
        elif is_bn_like(m):
            inner = getattr(m, "act", None)  # timm's BatchNormAct2d: BN + act in one module
            if isinstance(inner, nn.Module) and not isinstance(inner, nn.Identity):
                replace(node.target, m, act or get_act(inner) or inner)
                report.with_act.append(node.target)
                continue
            # Look through no-op modules (timm's drop_block / drop_path at rate 0 are Identity).
            last, users = node, list(node.users)
            while len(users) == 1 and _is_identity(users[0], modules):
                last, users = users[0], list(users[0].users)
            found = activation_of(users[0], modules) if len(users) == 1 else None
            if found is not None and users[0].args[0] is last:
                replace(node.target, m, act or found)
                users[0].replace_all_uses_with(last)
                gm.graph.erase_node(users[0])
                report.with_act.append(node.target)
            else:
                replace(node.target, m, None)
                why = "several users" if len(users) > 1 else _describe(users, modules)
                report.without_act.append(f"{node.target} (followed by {why})")
    _report_left(gm, modules, report)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _report_left(gm: fx.GraphModule, modules: dict[str, nn.Module], report) -> None:
    for node in gm.graph.nodes:
        found = activation_of(node, modules)
        if found is not None:
            src = node.args[0] if node.args else None
            what = _describe([src], modules) if isinstance(src, fx.Node) else "?"
            report.left.append(f"{_name(node)}: activation after {what}, not after a norm")
        elif node.op == "call_module" and isinstance(
            modules.get(node.target), nn.GroupNorm | nn.LayerNorm | nn.InstanceNorm2d
        ):
            report.left.append(f"{node.target}: already batch independent")
        elif node.op == "get_attr" and str(node.target).startswith("_tensor_constant"):
            report.left.append(
                f"{node.target}: a tensor computed while tracing {_owner(node) or 'the model'} "
                "and frozen into the graph"
            )


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
