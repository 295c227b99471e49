"""Fused proxy-normalized activation: one ``autograd.Function`` per PN activation step.

Labatie et al., NeurIPS 2021, Eq. (7); docs/METHOD.md §2. Per channel, PN's activation step is

    out = (φ(γ y + β) − m) · r,    m = E[φ(γ Y~ + β)],  r = 1 / sqrt(Var[φ(γ Y~ + β)] + eps)

with ``Y~ = β~ + (1 + γ~) q`` over the ``n`` standard-normal quantiles ``q`` (population
variance). One Function computes the proxy statistics (C × n values) and the input-sized step,
saves only its input, the (C,)-sized parameters and, fused with GroupNorm, the per-group statistics
and its own output (which the next convolution saves anyway), and recomputes the rest in backward
with hand-derived gradients:

    ∂/∂y = g r φ'(u) γ,   ∂/∂γ = r Σ g φ'(u) y,   ∂/∂β = r Σ g φ'(u)      (main path, u = γy + β)
    ∂/∂m = −r Σ g,        ∂/∂r = Σ g (φ(u) − m) = Σ g · out / r
    ∂/∂v = −r³/2 · ∂/∂r;  through the proxy: ∂/∂z~_i = (∂/∂m + 2 (z~_i − m) ∂/∂v) / n,
    ∂/∂u~_i = φ'(u~_i) ∂/∂z~_i, then γ, β, γ~, β~ by the chain rule through u~ = γ Y~ + β.

With ``groups`` set, the Function also does the GroupNorm step before it (GN, LN = 1 group,
IN = C groups) through PyTorch's native ``native_group_norm`` kernels, so a GN+PN layer makes the
same passes over memory as GN + ReLU plus one. For positively homogeneous φ (ReLU, LeakyReLU,
identity), r > 0 is folded into the norm's affine: ``out = φ(γr·y + βr) − mr``, for ReLU
``max(γr·y + (β−m)r, −mr)``. Every activation of the registry (:mod:`.activation`) takes this
path: φ' comes from the same aten kernels autograd uses.

The proxy statistics and their gradients are :mod:`proxynorm.layers.pn.stats` (under
``torch.compile`` one pass over z~, and for ReLU none: a closed form).
"""

from __future__ import annotations

import torch
from torch import Tensor

from proxynorm.layers import kernels
from proxynorm.layers.activation import Act, get_act
from proxynorm.layers.kernels import as_dtype, cl_crash, dense, group_norm, memory_format, upcast
from proxynorm.layers.pn import cpp
from proxynorm.layers.pn.stats import (
    closed_form,
    proxy_forward,
    proxy_grads,
    proxy_statistics,
    relu_proxy_grads,
)

__all__ = ["fused_proxy_norm_act", "proxy_statistics"]


def _affine(xf: Tensor, w: Tensor, b: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``w x + b`` per channel, in ``xf``'s memory format (a broadcast first operand would
    otherwise decide the output layout)."""
    return torch.addcmul(b.view(shape), xf, w.view(shape), out=torch.empty_like(xf))


def _sum_but_channels(t: Tensor) -> Tensor:
    return t.sum(dim=(0, 2, 3) if t.dim() == 4 else 0)


def _norm_affine(xf: Tensor, w: Tensor, b: Tensor, groups: int | None, eps: float, shape):
    """``(w y + b, group stats)`` with ``y = xf`` or ``GroupNorm(xf, groups)`` (native kernel)."""
    if groups is None:
        return _affine(xf, w, b, shape), []
    out, *stats = group_norm(xf, groups, w, b, eps)
    return out, stats


def _step(x: Tensor, w, b, m, r, act: Act, groups: int | None, eps: float):
    """The input-sized forward: ``(out, group stats)``, in x's (upcast) compute dtype."""
    xf = dense(x)
    shape = (1, xf.shape[1]) + (1,) * (x.dim() - 2)
    mr = m * r
    if act.name in ("identity", "relu"):  # − mr inside the affine; ReLU clamps at − mr
        out, stats = _norm_affine(xf, w * r, b * r - mr, groups, eps, shape)
        if act.name == "relu":
            out.clamp_min_((-mr).view(shape))
    elif act.homogeneous:  # φ(u r) = φ(u) r
        out, stats = _norm_affine(xf, w * r, b * r, groups, eps, shape)
        act.apply_(out).sub_(mr.view(shape))
    else:
        u, stats = _norm_affine(xf, w, b, groups, eps, shape)
        out = _affine(act.apply_(u), r, -mr, shape)
    return out, stats


class _ProxyNormActFunction(torch.autograd.Function):
    """``out = (φ(γ y + β) − m) r`` with ``y = x`` (``groups=None``) or ``y = GN(x, groups)``, and
    m, r the proxy statistics of (γ, β, γ~, β~)."""

    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        proxy_weight,
        proxy_bias,
        quantiles,
        act: str,
        proxy_eps: float,
        scale: bool,
        groups: int | None,
        eps: float,
    ):
        cdt = upcast(x).dtype
        w, b = as_dtype(weight, cdt), as_dtype(bias, cdt)
        params = (weight, bias, proxy_weight, proxy_bias)
        m, r, proxy = proxy_forward(*params, quantiles, act, proxy_eps, scale, cdt)
        out, stats = _step(x, w, b, m, r, act, groups, eps)
        out = as_dtype(out, x.dtype)
        ctx.act, ctx.proxy_eps, ctx.scale, ctx.groups, ctx.eps = act, proxy_eps, scale, groups, eps
        # The backward takes the forward's proxy path whatever it runs under (compiled autograd
        # may trace the backward of an eager forward): ``proxy`` is what that path saved.
        ctx.closed, ctx.n = closed_form(act), quantiles.numel()
        # The C × n proxy intermediates are recomputed in backward rather than saved: at small
        # batches (PN's use) they would be a visible share of the saved memory (C × n per layer).
        # ReLU under compile keeps its three sums (3 × C) instead and recomputes nothing.
        ctx.save_for_backward(x, weight, bias, proxy_weight, proxy_bias, proxy, m, r, out, *stats)
        return out

    @staticmethod
    def backward(ctx, g):
        act, groups, eps = ctx.act, ctx.groups, ctx.eps
        x, weight, bias, proxy_weight, proxy_bias, proxy, m, r, out, *stats = ctx.saved_tensors
        need_x, need_w, need_b, need_pw, need_pb = ctx.needs_input_grad[:5]
        xf = dense(x)
        gf = upcast(g)  # any layout: the kernels below take strides (an expanded g stays cheap)
        cdt = xf.dtype
        n, c = xf.shape[0], xf.shape[1]
        hw = xf.numel() // max(n * c, 1)
        shape = (1, c) + (1,) * (x.dim() - 2)
        w, b = as_dtype(weight, cdt), as_dtype(bias, cdt)

        # --- main path. go = g φ'(u), the gradient at the affine output (r folded into γ).
        # Input-sized temporaries are few and reused in place: on CPU each fresh one costs page
        # faults comparable to the arithmetic.
        if act.name == "identity":
            go = gf
        elif act.homogeneous:
            # φ'(u) depends on the sign of u only, which is the sign of out + mr = φ(u) r.
            if out.dtype == cdt:
                shifted = out + (m * r).view(shape)
            else:  # a low-precision output would blur the mask: recompute u r in float32
                shifted = _norm_affine(xf, w * r, b * r, groups, eps, shape)[0]
            if act.name == "relu":  # ReLU's own kernel, writing into shifted (no new tensor)
                go = torch.ops.aten.threshold_backward.grad_input(
                    gf, shifted, 0.0, grad_input=shifted
                )
            else:
                go = act.grad(gf, shifted)
        else:
            go = act.grad(gf, _norm_affine(xf, w, b, groups, eps, shape)[0])

        wr = w * r
        gx = None
        if groups is None:
            gx = go * wr.view(shape) if need_x else None
            gb = _sum_but_channels(go)
            prod = go.mul_(xf) if go is not gf else go * xf
            gw = _sum_but_channels(prod)
        else:
            mu, rstd = stats
            gx, gw, gb = torch.ops.aten.native_group_norm_backward(
                go.contiguous(memory_format=memory_format(xf)),  # g may come in any layout
                xf,
                mu,
                rstd,
                wr,
                n,
                c,
                hw,
                groups,
                [need_x or cl_crash(xf), True, True],
            )
            gx = gx if need_x else None
        gsum = _sum_but_channels(gf)
        if act.homogeneous:  # Σ g φ(u) = Σ g φ'(u) u (Euler): no extra pass
            grad_r = torch.addcmul(torch.addcmul(w * gw, b, gb), m, gsum, value=-1.0)
        else:
            grad_r = _sum_but_channels(gf * upcast(out)).div_(r)
        grad_w, grad_b = r * gw, r * gb

        # --- proxy path: m and r through z~ = φ(u~), u~ = A q + B, with A = γ (1 + γ~),
        # B = β + γ β~: ∂A = Σ_i ∂u~_i q_i, ∂B = Σ_i ∂u~_i (over z~ recomputed, or ReLU's sums).
        params = (weight, bias, proxy_weight, proxy_bias)
        if ctx.closed:  # proxy: ReLU's sums, (3, C)
            grad_a, grad_bb = relu_proxy_grads(*params, proxy, ctx.n, m, r, gsum, grad_r,
                                                ctx.scale, cdt)  # fmt: skip
        else:  # proxy: the quantiles
            grad_a, grad_bb = proxy_grads(*params, proxy, act, m, r, gsum, grad_r, ctx.scale, cdt)
        grad_w.add_(grad_a)
        if proxy_weight is not None:
            grad_w.addcmul_(grad_a, as_dtype(proxy_weight, cdt))
        if proxy_bias is not None:
            grad_w.addcmul_(grad_bb, as_dtype(proxy_bias, cdt))
        grad_b.add_(grad_bb)
        grad_pw = grad_pb = None
        if need_pw and proxy_weight is not None:
            grad_pw = as_dtype(w * grad_a, proxy_weight.dtype)
        if need_pb and proxy_bias is not None:
            grad_pb = as_dtype(w * grad_bb, proxy_bias.dtype)
        return (
            None if gx is None else as_dtype(gx, x.dtype),
            as_dtype(grad_w, weight.dtype) if need_w else None,
            as_dtype(grad_b, bias.dtype) if need_b else None,
            grad_pw,
            grad_pb,
            *([None] * 6),
        )


def fused_proxy_norm_act(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    proxy_weight: Tensor | None,
    proxy_bias: Tensor | None,
    quantiles: Tensor,
    act: Act | str = "relu",
    proxy_eps: float = 0.03,
    scale: bool = True,
    groups: int | None = None,
    eps: float = 1e-5,
    stats: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """PN activation step, Eq. (7), in one autograd node, optionally fused with the GroupNorm
    step that produces ``y``. Same values and gradients as
    :func:`proxynorm.layers.pn.reference.proxy_norm_act` (after ``F.group_norm`` with ``groups``).

    Args:
        x: ``y`` itself (``groups=None``), or the GroupNorm input; (N, C) or (N, C, H, W).
        weight, bias: γ, β, shape (C,).
        proxy_weight, proxy_bias: γ~, β~ (C,), or ``None`` for zero.
        quantiles: the standard-normal quantiles (n,).
        act: an activation the registry knows (:func:`~proxynorm.layers.activation.get_act`).
        proxy_eps: PN's stability constant; ``scale=False`` only subtracts the proxy mean.
        groups, eps: the GroupNorm to apply to ``x`` first (``groups=None``: none).
        stats: precomputed ``(m, r)`` from :func:`proxy_statistics`, for inference only (no
            gradient flows through them).

    Returns:
        A tensor of ``x``'s shape and dtype (statistics in at least float32).
    """
    known = get_act(act)
    if known is None:
        raise ValueError(f"no fused path for act {act!r}: not in the activation registry")
    act = known
    # Statistics stay in float32 even under autocast (which would recast the native GN kernels);
    # the context is entered only when autocast is on (it costs a few µs per layer and step).
    if _autocast_on(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return _fused(x, weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps,
                          scale, groups, eps, stats)  # fmt: skip
    return _fused(
        x,
        weight,
        bias,
        proxy_weight,
        proxy_bias,
        quantiles,
        act,
        proxy_eps,
        scale,
        groups,
        eps,
        stats,
    )


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _fused(x, weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps, scale, groups,
           eps, stats):  # fmt: skip
    if stats is not None:
        cdt = upcast(x).dtype
        m, r = (as_dtype(s, cdt) for s in stats)
        return as_dtype(
            _step(x, as_dtype(weight, cdt), as_dtype(bias, cdt), m, r, act, groups, eps)[0], x.dtype
        )
    if not kernels.compiling() and not torch.jit.is_tracing():
        params = (weight, bias, proxy_weight, proxy_bias)
        if cpp.applies(x, params, act.name, groups):
            return cpp.group_norm_proxy_act(
                x, *params, quantiles, act.name, proxy_eps, scale, groups, eps
            )
    return _ProxyNormActFunction.apply(
        x, weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps, scale, groups, eps
    )
