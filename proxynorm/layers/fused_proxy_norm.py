"""Fused proxy-normalized activation: one ``autograd.Function`` per PN activation step.

Labatie et al., NeurIPS 2021, Eq. (7); ``SPEC.md`` §2. Per channel, PN's activation step is

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

Under ``torch.compile`` the proxy moments are one pass over z~ (shifted sums), and for ReLU none:
ReLU is linear where ``u~ > 0``, so m, r and their gradients follow in closed form from the count
and the sums of q and q² over the active quantiles (one C × n pass in forward, none in backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

from proxynorm.layers import cpp_kernel
from proxynorm.layers.activation import Act, get_act
from proxynorm.layers.precision import upcast


def _dense(x: Tensor) -> Tensor:
    """``x`` upcast to at least float32 and dense in its own memory format (native kernels)."""
    return upcast(x).contiguous(memory_format=_memory_format(x))


def _affine(xf: Tensor, w: Tensor, b: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``w x + b`` per channel, in ``xf``'s memory format (a broadcast first operand would
    otherwise decide the output layout)."""
    return torch.addcmul(b.view(shape), xf, w.view(shape), out=torch.empty_like(xf))


def _sum_but_channels(t: Tensor) -> Tensor:
    return t.sum(dim=(0, 2, 3) if t.dim() == 4 else 0)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (no dispatch when it already is: this runs per layer and step)."""
    return t if t.dtype == dtype else t.to(dtype)


def _proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt):
    """``(A, B)``, each (C,), with ``u~ = γ Y~ + β = A q + B``: ``A = γ (1 + γ~)``,
    ``B = β + γ β~`` (so that the C × n work is one ``addcmul`` and gradients two reductions)."""
    w, b = _as(weight, cdt), _as(bias, cdt)
    a = w if proxy_weight is None else torch.addcmul(w, w, _as(proxy_weight, cdt))
    return a, b if proxy_bias is None else torch.addcmul(b, w, _as(proxy_bias, cdt))


def _proxy_u(a: Tensor, b: Tensor, q: Tensor) -> Tensor:
    """u~ = A q + B, (C, n)."""
    return torch.addcmul(b.unsqueeze(1), a.unsqueeze(1), q.unsqueeze(0))


def _proxy_z(weight, bias, proxy_weight, proxy_bias, q: Tensor, act: Act, cdt, tracked: bool):
    """``(z~, u~, B)`` in ``cdt``: ``z~ = φ(u~)`` (C × n, written over ``u~`` unless ``tracked``
    or φ' needs ``u~``), ``u~`` (``None`` for ReLU and identity, whose derivative reads ``z~`` /
    nothing) and the proxy offset ``B`` (C,)."""
    a, b = _proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt)
    util = _proxy_u(a, b, q)
    keep_u = act.name not in ("relu", "identity")
    z = act(util) if keep_u or tracked else act.apply_(util)
    return z, util if keep_u else None, b


def _tracked(*params: Tensor | None) -> bool:
    """Whether the proxy ops must stay out of place: autograd records them, or a trace (which may
    run backward later) does."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)


def _two_pass_moments(z: Tensor, proxy_eps, scale: bool, tracked: bool):
    """``(m, r)`` of z~ (C × n) in two passes: the mean, then the centered squares (torch.var_mean
    over 256-wide rows is much slower on CPU); ``z~`` is centered in place unless ``tracked``."""
    mean = z.mean(1, keepdim=True)
    if not scale:
        return mean.squeeze(1), torch.ones_like(mean).squeeze(1)
    centered = z - mean if tracked else z.sub_(mean)
    return mean.squeeze(1), torch.rsqrt((centered * centered).mean(1).add_(proxy_eps))


def _shifted_moments(z: Tensor, shift: Tensor, proxy_eps, scale: bool):
    """``(m, r)`` of z~ (C × n) in one pass: the sum and sum of squares of ``z~ − shift``, which
    inductor fuses into one loop without storing ``z~``. With ``shift = φ(B)``, the median of z~
    for monotone φ and near it for the others, within about one proxy std of the mean, the
    subtraction loses at most about a bit."""
    d = z - shift.unsqueeze(1)
    dm = d.mean(1)
    if not scale:
        return shift + dm, torch.ones_like(dm)
    var = ((d * d).mean(1) - dm * dm).clamp_min(0.0)
    return shift + dm, torch.rsqrt(var + proxy_eps)


def _relu_sums(a: Tensor, b: Tensor, q: Tensor) -> Tensor:
    """(3, C) in float64: per channel, the number of quantiles where ReLU's proxy input
    ``u~_i = A q_i + B`` is positive, and the sums of ``q_i`` and ``q_i²`` over them. One C × n
    pass that stores nothing; ReLU is linear on that set, so the proxy moments and their gradients
    follow from these three numbers (:func:`_relu_moments`, :func:`_relu_proxy_grads`)."""
    f64 = torch.float64
    q = q.to(f64)
    on = torch.addcmul(b.to(f64).unsqueeze(1), a.to(f64).unsqueeze(1), q) > 0
    qa = torch.where(on, q, 0.0)
    return torch.stack([on.sum(1, dtype=f64), qa.sum(1), (qa * q).sum(1)])


def _relu_moments(sums: Tensor, a: Tensor, b: Tensor, n: int, proxy_eps, scale: bool, cdt):
    """``(m, r)`` of ``z~ = ReLU(A q + B)`` from :func:`_relu_sums`, in float64, then ``cdt``:
    the mean and mean square of ``d = z~ − c`` with ``c = ReLU(B)`` (the shift of
    :func:`_shifted_moments`), which are ``A q + B − c`` on the ``cnt`` active quantiles and
    ``−c`` on the others."""
    cnt, s1, s2 = sums
    a, b = a.to(torch.float64), b.to(torch.float64)
    c = b.clamp_min(0.0)
    bc = b - c
    dm = (a * s1 + bc * cnt - c * (n - cnt)) / n
    m = (c + dm).to(cdt)
    if not scale:
        return m, torch.ones_like(m)
    d2 = (a * a * s2 + 2 * a * bc * s1 + bc * bc * cnt + c * c * (n - cnt)) / n
    return m, torch.rsqrt((d2 - dm * dm).clamp_min(0.0) + proxy_eps).to(cdt)


def _closed_form(act: Act) -> bool:
    """Whether the proxy statistics and their gradients come from :func:`_relu_sums`: ReLU under
    ``torch.compile``, where the C × n proxy values are PN's main fixed cost (eager mode keeps the
    two-pass formula, and the C++ kernel its own)."""
    return act.name == "relu" and _compiling()


def _proxy(weight, bias, proxy_weight, proxy_bias, q: Tensor, act: Act, proxy_eps, scale, cdt):
    """``(m, r, for_backward)``: the proxy mean m and inverse std r = 1/sqrt(var + eps) (ones
    without ``scale``), (C,), in ``cdt``, and what the backward needs of the proxy (the
    quantiles in ``cdt``, or ReLU's sums). Two passes over z~ eager, one under ``torch.compile``
    (where the second pass would store z~), and for ReLU under compile, none of z~
    (:func:`_relu_sums`)."""
    if _closed_form(act):
        a, b = _proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt)
        sums = _relu_sums(a, b, q)
        return *_relu_moments(sums, a, b, q.numel(), proxy_eps, scale, cdt), sums
    q = _as(q, cdt)
    tracked = _tracked(weight, bias, proxy_weight, proxy_bias)
    z, _, b = _proxy_z(weight, bias, proxy_weight, proxy_bias, q, act, cdt, tracked)
    if _compiling():
        return *_shifted_moments(z, act(b), proxy_eps, scale), q
    return *_two_pass_moments(z, proxy_eps, scale, tracked), q


def proxy_statistics(
    weight: Tensor,
    bias: Tensor,
    proxy_weight: Tensor | None,
    proxy_bias: Tensor | None,
    quantiles: Tensor,
    act: Act,
    proxy_eps: float,
    scale: bool,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """The proxy mean m and r = 1/sqrt(var + eps) (ones without ``scale``), each (C,), in
    ``dtype`` (no autograd graph is recorded by the fused Function; see its backward)."""
    return _proxy(weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps, scale,
                  dtype)[:2]  # fmt: skip


def group_norm(x: Tensor, groups: int, w: Tensor | None, b: Tensor | None, eps: float):
    """``(out, mean, rstd)`` of PyTorch's native GroupNorm kernel on ``x`` (dense in its own
    memory format), with its affine ``w``, ``b`` (under ``torch.jit.trace``: ``(out, None,
    None)``).

    PyTorch's contiguous CPU kernel computes the variance as E[x²] − E[x]², which overflows in
    float32 for |x| ≳ 1e19 and returns NaN or zeros; there (a check on the N×G statistics, CPU only,
    outside tracing) the statistics are recomputed in float64, so the layer stays scale
    invariant like the channels_last and CUDA kernels.
    """
    if torch.jit.is_tracing():  # aten::group_norm keeps the batch size dynamic in a trace
        return torch.group_norm(x, groups, w, b, eps), None, None
    n, c = x.shape[0], x.shape[1]
    hw = x.numel() // max(n * c, 1)
    out, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, n, c, hw, groups, eps)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not _compiling()
        and rstd.numel()
        and not float(rstd.detach().amin()) > 0  # NaN, or 0 from an infinite variance
    ):
        d = [None if t is None else t.double() for t in (w, b)]
        out, mean, rstd = torch.ops.aten.native_group_norm(x.double(), *d, n, c, hw, groups, eps)
        out, mean, rstd = out.float(), mean.float(), rstd.float()
    return out, mean, rstd


def _compiling() -> bool:
    return bool(_is_compiling())


def _resolve_is_compiling():
    found = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    if found is None:
        from torch._dynamo import is_compiling as found
    return found


_is_compiling = _resolve_is_compiling()


def _norm_affine(xf: Tensor, w: Tensor, b: Tensor, groups: int | None, eps: float, shape):
    """``(w y + b, group stats)`` with ``y = xf`` or ``GroupNorm(xf, groups)`` (native kernel)."""
    if groups is None:
        return _affine(xf, w, b, shape), []
    out, *stats = group_norm(xf, groups, w, b, eps)
    return out, stats


def _step(x: Tensor, w, b, m, r, act: Act, groups: int | None, eps: float):
    """The input-sized forward: ``(out, group stats)``, in x's (upcast) compute dtype."""
    xf = _dense(x)
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


def _proxy_grads(weight, bias, proxy_weight, proxy_bias, q, act: Act, m, r, gsum, grad_r, scale,
                 cdt):  # fmt: skip
    """``(∂A, ∂B)`` (C,) from ``∂m = −r Σ g`` and ``∂r``, through z~ (C × n, recomputed):
    ``∂z~_i = (∂m + 2 (z~_i − m) ∂v) / n`` with ``∂v = −r³/2 ∂r``, ``∂u~_i = φ'(u~_i) ∂z~_i``,
    ``∂A = Σ_i ∂u~_i q_i``, ``∂B = Σ_i ∂u~_i``."""
    k = q.numel()
    tracked = _tracked(weight, bias, proxy_weight, proxy_bias)
    z, util, _ = _proxy_z(weight, bias, proxy_weight, proxy_bias, q, act, cdt, tracked)
    pm = m.unsqueeze(1)  # the forward's proxy mean
    centered = z - pm if tracked else z.sub_(pm)
    grad_m = (r * gsum).mul_(-1.0 / k).unsqueeze(1)
    if scale:
        dz = torch.addcmul(grad_m, centered, (r.pow(3) * grad_r).mul_(-1.0 / k).unsqueeze(1))
    else:
        dz = grad_m.expand_as(centered)
    if act.name == "relu":  # u~ > 0 exactly where z~ − m > −m
        du = torch.ops.aten.threshold_backward(dz, centered + pm, 0.0)
    elif act.name == "identity":
        du = dz
    else:
        du = act.grad(dz, util)
    return torch.mv(du, q), du.sum(1)


def _relu_proxy_grads(weight, bias, proxy_weight, proxy_bias, sums, n, m, r, gsum, grad_r, scale,
                      cdt):  # fmt: skip
    """:func:`_proxy_grads` for ReLU from :func:`_relu_sums` (float64): ``∂u~_i = ∂z~_i`` on the
    ``cnt`` active quantiles and 0 elsewhere, so ``∂B = (∂m cnt + 2 ∂v (A S1 + (B − m) cnt)) / n``
    and ``∂A = (∂m S1 + 2 ∂v (A S2 + (B − m) S1)) / n``."""
    cnt, s1, s2 = sums
    a, b = _proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt)
    a, b, f64 = a.to(torch.float64), b.to(torch.float64), torch.float64
    gm = -(r * gsum).to(f64)
    if not scale:
        return (gm * s1 / n).to(cdt), (gm * cnt / n).to(cdt)
    gv2 = -(r.pow(3) * grad_r).to(f64)  # 2 ∂v
    bm = b - m.to(f64)
    grad_a = (gm * s1 + gv2 * (a * s2 + bm * s1)) / n
    grad_b = (gm * cnt + gv2 * (a * s1 + bm * cnt)) / n
    return grad_a.to(cdt), grad_b.to(cdt)


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
        w, b = _as(weight, cdt), _as(bias, cdt)
        m, r, proxy = _proxy(weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps,
                             scale, cdt)  # fmt: skip
        out, stats = _step(x, w, b, m, r, act, groups, eps)
        out = _as(out, x.dtype)
        ctx.act, ctx.proxy_eps, ctx.scale, ctx.groups, ctx.eps = act, proxy_eps, scale, groups, eps
        # The backward takes the forward's proxy path whatever it runs under (compiled autograd
        # may trace the backward of an eager forward): ``proxy`` is what that path saved.
        ctx.closed, ctx.n = _closed_form(act), quantiles.numel()
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
        xf = _dense(x)
        gf = upcast(g)  # any layout: the kernels below take strides (an expanded g stays cheap)
        cdt = xf.dtype
        n, c = xf.shape[0], xf.shape[1]
        hw = xf.numel() // max(n * c, 1)
        shape = (1, c) + (1,) * (x.dim() - 2)
        w, b = _as(weight, cdt), _as(bias, cdt)

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
                go.contiguous(memory_format=_memory_format(xf)),  # g may come in any layout
                xf,
                mu,
                rstd,
                wr,
                n,
                c,
                hw,
                groups,
                [need_x, True, True],
            )
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
            grad_a, grad_bb = _relu_proxy_grads(*params, proxy, ctx.n, m, r, gsum, grad_r,
                                                ctx.scale, cdt)  # fmt: skip
        else:  # proxy: the quantiles
            grad_a, grad_bb = _proxy_grads(*params, proxy, act, m, r, gsum, grad_r, ctx.scale, cdt)
        grad_w.add_(grad_a)
        if proxy_weight is not None:
            grad_w.addcmul_(grad_a, _as(proxy_weight, cdt))
        if proxy_bias is not None:
            grad_w.addcmul_(grad_bb, _as(proxy_bias, cdt))
        grad_b.add_(grad_bb)
        grad_pw = grad_pb = None
        if need_pw and proxy_weight is not None:
            grad_pw = _as(w * grad_a, proxy_weight.dtype)
        if need_pb and proxy_bias is not None:
            grad_pb = _as(w * grad_bb, proxy_bias.dtype)
        return (
            None if gx is None else _as(gx, x.dtype),
            _as(grad_w, weight.dtype) if need_w else None,
            _as(grad_b, bias.dtype) if need_b else None,
            grad_pw,
            grad_pb,
            *([None] * 6),
        )


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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
    :func:`proxynorm.layers.proxy_norm.proxy_norm_act` (after ``F.group_norm`` with ``groups``).

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
        m, r = (_as(s, cdt) for s in stats)
        return _as(_step(x, _as(weight, cdt), _as(bias, cdt), m, r, act, groups, eps)[0], x.dtype)
    if not _compiling() and not torch.jit.is_tracing():
        params = (weight, bias, proxy_weight, proxy_bias)
        if cpp_kernel.applies(x, params, act.name, groups):
            return cpp_kernel.group_norm_proxy_act(
                x, *params, quantiles, act.name, proxy_eps, scale, groups, eps
            )
    return _ProxyNormActFunction.apply(
        x, weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps, scale, groups, eps
    )
