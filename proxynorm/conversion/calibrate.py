r"""Calibrated conversion: set a converted model's parameters so that it computes what the BN
model computed, from a few batches of real inputs (no gradients, eval mode).

Labatie et al., NeurIPS 2021, §5 converts BN models to GN+PN and trains them; carrying BN's γ, β
alone does not keep the function, because a BN layer in eval mode is a fixed per-channel affine
map of its input ``x``, ``v = a x + b`` (``a = γ / sqrt(running_var + eps)``,
``b = β − a · running_mean``), while a GroupNorm step divides each sample's group by its own
statistics, ``y = (x − μ_ng) / σ_ng``. So ``v = a σ_ng y + a μ_ng + b`` depends on per-sample
statistics that GN removes, and no fixed affine of ``y`` equals it unless they are constant.

The calibration goes through the converted layers in depth order. Each one is fitted on the
outputs of the already calibrated earlier layers (the converted model's own ``y``), against the
BN model's activations at the same layer (the BN model's own forward), so errors do not pile up.
Both models are streamed block by block (:mod:`proxynorm.conversion.blocks`: residual blocks,
stem, head): the images go through each block once its layers are calibrated, and only the
current block's inputs are kept, so a layer's activations come from a forward of its own block,
not of the model from its input, and the cost grows linearly with depth:

1. **Pre-activation fit.** Per channel c, least squares over all samples and positions

   .. math:: (\gamma'_c, \beta'_c) = \arg\min \sum (\gamma'_c y_c + \beta'_c - v_c)^2,\quad
             \gamma'_c = \frac{\mathrm{Cov}(y_c, v_c)}{\mathrm{Var}(y_c)},\quad
             \beta'_c = \bar v_c - \gamma'_c \bar y_c,

   the best per-channel affine of the new normalization; its :math:`R^2` says how much of the BN
   pre-activation's variance the new normalization can represent (1 when the per-sample group
   statistics are constant).
2. **PN's proxy** follows the data: ``β~_c = mean(y_c)``, ``1 + γ~_c = std(y_c)``, so that the
   proxy ``Y~`` has the moments of the layer's actual ``y``.
3. **The consumers absorb the rest.** PN's output ``z = (φ(u) − m) · r`` is an affine map of
   ``φ(u)`` per channel, and ``φ(u)`` itself only approximates ``φ(v)``. Every ``Conv2d`` /
   ``Linear`` that reads the layer's output (directly or through pooling, flatten, dropout) is
   refitted by ridge least squares, ``W', b' = argmin Σ ‖W' ⋆ z + b' − W ⋆ φ(v)‖² + λ‖W'‖²``:
   its input is the converted model's, its target the BN model's output of the same module.
   This compensates ``r`` and ``m`` exactly where the conv is not padded and optimally
   (including the zero-padded borders) otherwise; a conv without bias gets one
   (``report.biased``).

Layers whose BN was not followed by an activation (before residual adds) get step 1 only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from proxynorm.conversion.blocks import BlockRunner, plan, split
from proxynorm.conversion.fx import trace_holders
from proxynorm.layers import BatchNormAct2d, NormAct, ProxyNormAct

UNFOLD_ELEMENTS = 2**24  # patch entries per im2col chunk (128 MiB in float64): bounds the memory


@dataclass
class LayerFit:
    """How well one converted layer reproduces the BN model's pre-activations (step 1), on the
    calibration inputs: ``r2_before`` with BN's γ, β carried as they are, ``r2_after``
    calibrated."""

    name: str
    channels: int
    r2_before: float
    r2_after: float


@dataclass
class ConsumerFit:
    """A refitted ``Conv2d``/``Linear`` (step 3): relative squared error of its output against
    the BN model's, before and after the refit."""

    name: str
    rel_error_before: float
    rel_error_after: float


@dataclass
class CalibrationReport:
    layers: list[LayerFit] = field(default_factory=list)
    consumers: list[ConsumerFit] = field(default_factory=list)
    biased: list[str] = field(default_factory=list)  # convs that got a bias
    images: int = 0

    def __str__(self) -> str:
        lines = [f"calibrated on {self.images} images; per layer, R² of the BN pre-activation "
                 "(BN's γ, β carried -> calibrated):"]  # fmt: skip
        lines += [f"  {f.name}: {f.r2_before:.3f} -> {f.r2_after:.3f}" for f in self.layers]
        lines.append("refitted consumers, relative error of the output (before -> after):")
        lines += [
            f"  {c.name}: {c.rel_error_before:.3f} -> {c.rel_error_after:.3f}"
            for c in self.consumers
        ]
        if self.biased:
            lines.append(f"convs given a bias: {', '.join(self.biased)}")
        return "\n".join(lines)


class _Stop(Exception):
    """Raised by a hook once everything a pass needs is captured (the rest is not computed)."""


def bn_affine(m: nn.Module) -> tuple[Tensor, Tensor]:
    """``(a, b)`` with ``BN(x) = a x + b`` per channel in eval mode, in float64, for a BatchNorm,
    a frozen BN-like module or this package's ``BatchNormAct2d`` (γ, β of its activation step)."""
    if isinstance(m, BatchNormAct2d):
        mean, var, eps = m.norm.running_mean, m.norm.running_var, m.norm.eps
        weight, bias = m.weight, m.bias
    else:
        mean, var, eps = m.running_mean, m.running_var, getattr(m, "eps", 1e-5)
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
    a = torch.rsqrt(var.double() + eps)
    if weight is not None:
        a = a * weight.double()
    b = -a * mean.double()
    if bias is not None:
        b = b + bias.double()
    return a, b


def input_batches(inputs: Tensor | Iterable) -> list[Tensor]:
    """The image batches of ``inputs``: a tensor, or an iterable of tensors or ``(x, ...)``
    tuples (only ``x`` is read: labels, when given, are never looked at)."""
    if isinstance(inputs, Tensor):
        return [inputs]
    out = [b[0] if isinstance(b, list | tuple) else b for b in inputs]
    if not out or not all(isinstance(b, Tensor) for b in out):
        raise ValueError("calibrate needs a tensor or an iterable of input batches (tensors)")
    return out


@dataclass
class _Side:
    """One model as the calibration streams it: the current block's forward, the model's
    modules by name (for hooks), and the block's inputs (one tensor per batch)."""

    forward: Callable[[Tensor], Any]
    modules: dict[str, nn.Module]
    inputs: list[Tensor]


def _capture(side: _Side, x: Tensor, wants: dict[str, str]) -> dict[str, Tensor]:
    """Run the block on ``x`` until every ``{module name: "in" | "out"}`` in ``wants`` is
    captured."""
    got: dict[str, Tensor] = {}
    handles = []
    modules = side.modules

    def grab(name: str, t: Tensor) -> None:
        got[name] = t.detach()
        if len(got) == len(wants):
            raise _Stop

    for name, where in wants.items():
        m = modules[name]
        if where == "in":
            handles.append(m.register_forward_pre_hook(lambda _m, a, n=name: grab(n, a[0])))
        else:
            handles.append(m.register_forward_hook(lambda _m, a, o, n=name: grab(n, o)))
    try:
        side.forward(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = set(wants) - set(got)
    if missing:
        raise ValueError(f"calibration: {sorted(missing)} did not run in its block")
    return got


def _r2(sums: dict[str, Tensor], w: Tensor, b: Tensor) -> float:
    """R² of ``w y + b`` against ``v`` from per-channel sums (pooled over channels)."""
    n = sums["n"]
    sse = (
        w * w * sums["yy"] + 2 * w * b * sums["y"] + n * b * b
        - 2 * w * sums["yv"] - 2 * b * sums["v"] + sums["vv"]
    )  # fmt: skip
    sst = sums["vv"] - sums["v"] ** 2 / n
    return float(1 - sse.sum() / sst.sum().clamp_min(1e-300))


def _unfold(m: nn.Module, x: Tensor) -> Tensor:
    """``(groups, positions, K)`` float64 patches of ``m``'s input (a conv's im2col, or a linear's
    rows); the bias column is added to the sums by :func:`_normal_sums`, not stored."""
    x = x.double()
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1]).unsqueeze(0)
    cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (N, Cin*k*k, L)
    g = m.groups
    cols = cols.view(x.shape[0], g, -1, cols.shape[-1])  # (N, g, K, L)
    return cols.permute(1, 0, 3, 2).reshape(g, -1, cols.shape[2])


def _normal_sums(p: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The normal equations' ``[P 1]ᵀ[P 1]`` and ``[P 1]ᵀ T`` of patches ``p`` (with a column of
    ones for the bias, written as its sums) and targets ``t``."""
    s = p.sum(1, keepdim=True)  # (g, 1, K): 1ᵀP
    n = p.new_full((p.shape[0], 1, 1), p.shape[1])
    gram = torch.cat([torch.cat([p.transpose(1, 2) @ p, s.transpose(1, 2)], 2),
                      torch.cat([s, n], 2)], 1)  # fmt: skip
    return gram, torch.cat([p.transpose(1, 2) @ t, t.sum(1, keepdim=True)], 1)


def _rows(m: nn.Module, inp: Tensor, out: Tensor) -> int:
    """Images per im2col chunk: at most ``UNFOLD_ELEMENTS`` patch entries (at least one image)."""
    per_image = inp[0].numel()  # a linear's rows x features
    if isinstance(m, nn.Conv2d):  # positions x Cin k k
        per_image = out[0, 0].numel() * inp.shape[1] * m.kernel_size[0] * m.kernel_size[1]
    return max(1, UNFOLD_ELEMENTS // max(per_image, 1))


def _targets(m: nn.Module, out: Tensor) -> Tensor:
    """``(groups, positions, Cout/groups)``: the module's output arranged like :func:`_unfold`."""
    out = out.double()
    if isinstance(m, nn.Linear):
        return out.reshape(-1, out.shape[-1]).unsqueeze(0)
    g = m.groups
    n, c = out.shape[:2]
    return out.view(n, g, c // g, -1).permute(1, 0, 3, 2).reshape(g, -1, c // g)


def _current(m: nn.Module) -> Tensor:
    """``(groups, K + 1, Cout/groups)``: the module's weight and bias in the form of the fit."""
    w = m.weight.detach().double()
    b = m.bias.detach().double() if m.bias is not None else w.new_zeros(w.shape[0])
    if isinstance(m, nn.Linear):
        return torch.cat([w.t(), b[None]], 0).unsqueeze(0)
    g = m.groups
    wg = w.view(g, w.shape[0] // g, -1).transpose(1, 2)  # (g, K, Cout/g)
    return torch.cat([wg, b.view(g, 1, -1)], 1)


@torch.no_grad()
def calibrate(
    converted: fx.GraphModule,
    original: nn.Module,
    converted_layers: list[str],
    inputs: Tensor | Iterable,
    ridge: float = 1e-4,
) -> CalibrationReport:
    """Calibrate ``converted`` (in place) against ``original`` on ``inputs`` (see the module
    docstring). ``converted_layers`` are the names of the converted norm-act layers, which are
    also the names of the BN modules they replaced in ``original``.

    Deterministic given the inputs; both models are run in eval mode without gradients and put
    back in their modes; ``original`` is not changed.
    """
    batches = input_batches(inputs)
    modes = {m: m.training for m in (*converted.modules(), *original.modules())}
    converted.eval()
    original.eval()
    try:
        report = CalibrationReport(images=sum(len(b) for b in batches))
        consumers = _consumers(converted, converted_layers)
        last_producer = {c: max(i for i, (_, cs) in enumerate(consumers) if c in cs)
                         for _, cs in consumers for c in cs}  # fmt: skip
        teacher = fx.GraphModule(original, trace_holders(original, training=False))
        ends = plan(converted, teacher, set(converted_layers))
        rc, rt = BlockRunner(converted), BlockRunner(teacher)
        conv = _Side(converted, dict(converted.named_modules()), list(batches))
        orig = _Side(original, dict(original.named_modules()), list(batches))
        blocks = list(zip(split(converted, ends), split(teacher, ends), strict=True))
        for k, (bc, bt) in enumerate(blocks):
            conv.forward = functools.partial(rc.block, bc)
            orig.forward = functools.partial(rt.block, bt)
            for i, (name, _) in enumerate(consumers):
                if name not in bc.modules:
                    continue
                report.layers.append(_fit_layer(conv, orig, name))
                for c in [c for c, last in last_producer.items() if last == i]:
                    report.consumers.append(_refit_consumer(conv, orig, c, ridge, report))
            if k + 1 < len(blocks):  # the next block's inputs, each batch's replacing its own
                for side in (conv, orig):
                    for i, x in enumerate(side.inputs):
                        side.inputs[i] = side.forward(x)
                    del x
    finally:
        for m, mode in modes.items():
            m.training = mode
    return report


def _consumers(gm: fx.GraphModule, layers: list[str]) -> list[tuple[str, list[str]]]:
    """The converted norm-act layers in graph order, each with the ``Conv2d``/``Linear`` modules
    that read its output (through pooling, flatten, dropout, identity); none for layers without
    activation (their output feeds adds)."""
    from proxynorm.conversion.fold import passes_shift

    modules = dict(gm.named_modules())
    wanted = set(layers)
    order = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        layer = modules[node.target]
        found: list[str] = []
        if layer.apply_act:
            frontier, ok = list(node.users), True
            while frontier:
                u = frontier.pop()
                if u.op == "call_module" and isinstance(modules[u.target], nn.Conv2d | nn.Linear):
                    found.append(u.target)
                elif passes_shift(u, modules):
                    frontier += list(u.users)
                else:
                    ok = False  # read by something else too: no consumer can absorb r and m
            found = found if ok else []
        order.append((node.target, sorted(set(found))))
    return order


def _fit_layer(conv: _Side, orig: _Side, name: str) -> LayerFit:
    """Step 1 (and 2 for PN): per-channel least squares of the BN pre-activation on y."""
    layer: NormAct = conv.modules[name]
    a, b = bn_affine(orig.modules[name])
    c = a.numel()
    sums = {k: torch.zeros(c, dtype=torch.float64) for k in ("y", "v", "yy", "vv", "yv")}
    sums["n"] = torch.zeros((), dtype=torch.float64)
    for xc, xo in zip(conv.inputs, orig.inputs, strict=True):
        bn_in = _capture(orig, xo, {name: "in"})[name]
        y_all = layer.norm(_capture(conv, xc, {name: "in"})[name])
        rows = max(1, UNFOLD_ELEMENTS // 4 // max(bn_in[0].numel(), 1))  # float64 temporaries
        for x, y in zip(bn_in.split(rows), y_all.split(rows), strict=True):
            shape = (1, -1, *[1] * (x.dim() - 2))
            v = a.view(shape) * x.double() + b.view(shape)
            y = y.double()
            dims = [0, *range(2, y.dim())]
            sums["y"] += y.sum(dims)
            sums["v"] += v.sum(dims)
            sums["yy"] += (y * y).sum(dims)
            sums["vv"] += (v * v).sum(dims)
            sums["yv"] += (y * v).sum(dims)
            sums["n"] += y.numel() / c
    n = sums["n"]
    mean_y, mean_v = sums["y"] / n, sums["v"] / n
    var_y = (sums["yy"] / n - mean_y**2).clamp_min(0)
    cov = sums["yv"] / n - mean_y * mean_v
    gamma = torch.where(var_y > 1e-12, cov / var_y.clamp_min(1e-12), torch.zeros_like(cov))
    beta = mean_v - gamma * mean_y
    before = _r2(sums, layer.weight.detach().double(), layer.bias.detach().double())
    layer.weight.copy_(gamma.to(layer.weight.dtype))
    layer.bias.copy_(beta.to(layer.bias.dtype))
    pn = layer.act if isinstance(layer.act, ProxyNormAct) else None
    if pn is not None and pn.proxy_affine:
        pn.proxy_bias.copy_(mean_y.to(pn.proxy_bias.dtype))
        pn.proxy_weight.copy_((var_y.sqrt() - 1).to(pn.proxy_weight.dtype))
    return LayerFit(name, c, before, _r2(sums, gamma, beta))


def _refit_consumer(conv: _Side, orig: _Side, name: str, ridge: float, report) -> ConsumerFit:
    """Step 3: ridge least squares of the module's weights from its converted input to the BN
    model's output of the same module."""
    m = conv.modules[name]
    gram = rhs = None
    target_ss = 0.0
    for xc, xo in zip(conv.inputs, orig.inputs, strict=True):
        inp = _capture(conv, xc, {name: "in"})[name]
        out = _capture(orig, xo, {name: "out"})[name]
        rows = _rows(m, inp, out)
        for i, o in zip(inp.split(rows), out.split(rows), strict=True):  # bounded im2col memory
            g_, r_ = _normal_sums(_unfold(m, i), t := _targets(m, o))
            gram = g_ if gram is None else gram.add_(g_)
            rhs = r_ if rhs is None else rhs.add_(r_)
            del g_, r_
            target_ss += float((t * t).sum())

    def sse(theta: Tensor) -> float:  # Σ‖P θ − T‖² from the normal equations' sums
        return float(
            (theta.transpose(1, 2) @ gram @ theta).diagonal(dim1=1, dim2=2).sum()
            - 2 * (theta * rhs).sum()
            + target_ss
        )

    before = sse(_current(m))
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    system = gram.clone()  # gram + ridge * scale * I, without an identity matrix in memory
    system.diagonal(dim1=1, dim2=2).add_(ridge * scale.view(-1, 1))
    theta = torch.linalg.solve(system, rhs)
    del system
    if _set_weights(m, theta):
        report.biased.append(name)
    return ConsumerFit(name, before / max(target_ss, 1e-300), sse(theta) / max(target_ss, 1e-300))


def _set_weights(m: nn.Module, theta: Tensor) -> bool:
    """Write the fitted weights and bias; ``True`` when the module had no bias and got one."""
    w = m.weight
    if isinstance(m, nn.Linear):
        new_w, new_b = theta[0, :-1].t(), theta[0, -1]
    else:
        new_w = theta[:, :-1].transpose(1, 2).reshape(w.shape)  # (g, Cout/g, K) -> weight
        new_b = theta[:, -1].reshape(-1)
    w.copy_(new_w.to(w.dtype))
    if m.bias is None:
        m.bias = nn.Parameter(new_b.to(device=w.device, dtype=w.dtype))
        return True
    m.bias.copy_(new_b.to(m.bias.dtype))
    return False
