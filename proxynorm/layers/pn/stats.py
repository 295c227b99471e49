"""PN's proxy statistics: the mean ``m`` and inverse std ``r`` of ``φ(γ Y~ + β)`` over the proxy
quantiles, and their gradients (Labatie et al., NeurIPS 2021, Eq. 7; docs/METHOD.md §2).

With ``u~ = γ Y~ + β = A q + B`` (``A = γ (1 + γ~)``, ``B = β + γ β~``) over the ``n``
standard-normal quantiles ``q``, the statistics are computed one of three ways:

* ``two-pass`` (eager): ``z~ = φ(u~)`` (C × n), its mean, then the centered squares;
* ``one-pass`` (under ``torch.compile``): the sum and sum of squares of ``z~ − φ(B)``, which
  inductor fuses into one loop without storing ``z~``;
* ``closed`` (ReLU under ``torch.compile``): ReLU is linear where ``u~ > 0``, so m, r and their
  gradients follow from the count and the sums of ``q`` and ``q²`` over the active quantiles (one
  C × n pass in forward, none in backward).

:data:`COMPILED_PROXY` names the method used under compile (``"closed"``, the default, uses the
closed form for ReLU and one pass for the others); it is read while dynamo traces, so a benchmark
compiles each method into a graph of its own (``benchmarks/compiled_layer_cost.py``). All three
give the same values and gradients (tested against the reference in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from proxynorm.layers import kernels
from proxynorm.layers.activation import Act
from proxynorm.layers.kernels import as_dtype

#: The proxy statistics under ``torch.compile``: ``"closed"`` (ReLU's closed form; one pass for
#: other activations), ``"one-pass"`` or ``"two-pass"`` (the eager formula). A named switch for
#: benchmarks; every value computes the same function.
COMPILED_PROXY = {"method": "closed"}
COMPILED_METHODS = ("closed", "one-pass", "two-pass")


def compiled_proxy(method: str) -> None:
    """Set :data:`COMPILED_PROXY` (for benchmarks; graphs compiled before keep their method)."""
    if method not in COMPILED_METHODS:
        raise ValueError(f"method must be one of {COMPILED_METHODS}, got {method!r}")
    COMPILED_PROXY["method"] = method


def proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt):
    """``(A, B)``, each (C,), with ``u~ = γ Y~ + β = A q + B``: ``A = γ (1 + γ~)``,
    ``B = β + γ β~`` (so that the C × n work is one ``addcmul`` and gradients two reductions)."""
    w, b = as_dtype(weight, cdt), as_dtype(bias, cdt)
    a = w if proxy_weight is None else torch.addcmul(w, w, as_dtype(proxy_weight, cdt))
    return a, b if proxy_bias is None else torch.addcmul(b, w, as_dtype(proxy_bias, cdt))


def _proxy_u(a: Tensor, b: Tensor, q: Tensor) -> Tensor:
    """u~ = A q + B, (C, n)."""
    return torch.addcmul(b.unsqueeze(1), a.unsqueeze(1), q.unsqueeze(0))


def _proxy_z(weight, bias, proxy_weight, proxy_bias, q: Tensor, act: Act, cdt, tracked: bool):
    """``(z~, u~, B)`` in ``cdt``: ``z~ = φ(u~)`` (C × n, written over ``u~`` unless ``tracked``
    or φ' needs ``u~``), ``u~`` (``None`` for ReLU and identity, whose derivative reads ``z~`` /
    nothing) and the proxy offset ``B`` (C,)."""
    a, b = proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt)
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


def two_pass_moments(z: Tensor, proxy_eps, scale: bool, tracked: bool):
    """``(m, r)`` of z~ (C × n) in two passes: the mean, then the centered squares (torch.var_mean
    over 256-wide rows is much slower on CPU); ``z~`` is centered in place unless ``tracked``."""
    mean = z.mean(1, keepdim=True)
    if not scale:
        return mean.squeeze(1), torch.ones_like(mean).squeeze(1)
    centered = z - mean if tracked else z.sub_(mean)
    return mean.squeeze(1), torch.rsqrt((centered * centered).mean(1).add_(proxy_eps))


def shifted_moments(z: Tensor, shift: Tensor, proxy_eps, scale: bool):
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


def relu_sums(a: Tensor, b: Tensor, q: Tensor) -> Tensor:
    """(3, C) in float64: per channel, the number of quantiles where ReLU's proxy input
    ``u~_i = A q_i + B`` is positive, and the sums of ``q_i`` and ``q_i²`` over them. One C × n
    pass that stores nothing; ReLU is linear on that set, so the proxy moments and their gradients
    follow from these three numbers (:func:`relu_moments`, :func:`relu_proxy_grads`)."""
    f64 = torch.float64
    q = q.to(f64)
    on = torch.addcmul(b.to(f64).unsqueeze(1), a.to(f64).unsqueeze(1), q) > 0
    qa = torch.where(on, q, 0.0)
    return torch.stack([on.sum(1, dtype=f64), qa.sum(1), (qa * q).sum(1)])


def relu_moments(sums: Tensor, a: Tensor, b: Tensor, n: int, proxy_eps, scale: bool, cdt):
    """``(m, r)`` of ``z~ = ReLU(A q + B)`` from :func:`relu_sums`, in float64, then ``cdt``:
    the mean and mean square of ``d = z~ − c`` with ``c = ReLU(B)`` (the shift of
    :func:`shifted_moments`), which are ``A q + B − c`` on the ``cnt`` active quantiles and
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


def closed_form(act: Act) -> bool:
    """Whether the proxy statistics and their gradients come from :func:`relu_sums`: ReLU under
    ``torch.compile``, where the C × n proxy values are PN's main fixed cost (eager mode keeps the
    two-pass formula, and the C++ kernel its own)."""
    return act.name == "relu" and kernels.compiling() and COMPILED_PROXY["method"] == "closed"


def proxy_forward(weight, bias, proxy_weight, proxy_bias, q: Tensor, act: Act, proxy_eps, scale,
                  cdt):  # fmt: skip
    """``(m, r, for_backward)``: the proxy mean m and inverse std r = 1/sqrt(var + eps) (ones
    without ``scale``), (C,), in ``cdt``, and what the backward needs of the proxy (the
    quantiles in ``cdt``, or ReLU's sums). Two passes over z~ eager, one under ``torch.compile``
    (where the second pass would store z~), and for ReLU under compile, none of z~
    (:func:`relu_sums`)."""
    if closed_form(act):
        a, b = proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt)
        sums = relu_sums(a, b, q)
        return *relu_moments(sums, a, b, q.numel(), proxy_eps, scale, cdt), sums
    q = as_dtype(q, cdt)
    tracked = _tracked(weight, bias, proxy_weight, proxy_bias)
    z, _, b = _proxy_z(weight, bias, proxy_weight, proxy_bias, q, act, cdt, tracked)
    if kernels.compiling() and COMPILED_PROXY["method"] != "two-pass":
        return *shifted_moments(z, act(b), proxy_eps, scale), q
    return *two_pass_moments(z, proxy_eps, scale, tracked), q


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
    return proxy_forward(weight, bias, proxy_weight, proxy_bias, quantiles, act, proxy_eps, scale,
                  dtype)[:2]  # fmt: skip


def proxy_grads(weight, bias, proxy_weight, proxy_bias, q, act: Act, m, r, gsum, grad_r, scale,
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


def relu_proxy_grads(weight, bias, proxy_weight, proxy_bias, sums, n, m, r, gsum, grad_r, scale,
                      cdt):  # fmt: skip
    """:func:`proxy_grads` for ReLU from :func:`relu_sums` (float64): ``∂u~_i = ∂z~_i`` on the
    ``cnt`` active quantiles and 0 elsewhere, so ``∂B = (∂m cnt + 2 ∂v (A S1 + (B − m) cnt)) / n``
    and ``∂A = (∂m S1 + 2 ∂v (A S2 + (B − m) S1)) / n``."""
    cnt, s1, s2 = sums
    a, b = proxy_affine(weight, bias, proxy_weight, proxy_bias, cdt)
    a, b, f64 = a.to(torch.float64), b.to(torch.float64), torch.float64
    gm = -(r * gsum).to(f64)
    if not scale:
        return (gm * s1 / n).to(cdt), (gm * cnt / n).to(cdt)
    gv2 = -(r.pow(3) * grad_r).to(f64)  # 2 ∂v
    bm = b - m.to(f64)
    grad_a = (gm * s1 + gv2 * (a * s2 + bm * s1)) / n
    grad_b = (gm * cnt + gv2 * (a * s1 + bm * cnt)) / n
    return grad_a.to(cdt), grad_b.to(cdt)
