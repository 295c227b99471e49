"""The proxy-normalized activation step (Proxy Normalization, PN).

Labatie, Masters, Eaton-Rosen, Luschi, "Proxy-Normalizing Activations to Match Batch
Normalization while Removing Batch Dependence", NeurIPS 2021, Eq. (7) and Appendix B;
docs/METHOD.md §2.

PN replaces the activation step ``z = φ(γ y + β)`` that follows a norm step by::

    z~ = (φ(γ y + β) − E[φ(γ Y~ + β)]) / sqrt(Var[φ(γ Y~ + β)] + eps),   Y~ ~ N(β~, (1 + γ~)²)

per channel, where the proxy moments are computed on ``n`` deterministic quantiles of N(0, 1),
``q_i = sqrt(2) · erfinv(2 (i + 0.5) / n − 1)``, with mean and *population* variance over ``i``.
The proxy moments depend only on parameters, never on the batch, so PN is batch independent,
and gradients reach γ, β, β~, γ~ both through the main path and through the proxy moments.

This module is the reference composition of PyTorch ops (what the tests compare the fused
path with, in float64); :mod:`.module` holds the layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from proxynorm.layers.activation import Activation, resolve_act
from proxynorm.layers.validation import check_positive


def proxy_quantiles(
    n_samples: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The ``n`` quantiles of N(0, 1) "uniformly sampled in probability" (docs/METHOD.md §2).

    .. math:: q_i = \\Phi^{-1}\\big(\\tfrac{i + 0.5}{n}\\big)
              = \\sqrt{2}\\,\\mathrm{erfinv}\\big(\\tfrac{2 (i + 0.5)}{n} - 1\\big),
              \\quad i = 0..n-1

    Computed in float64 with :func:`torch.special.erfinv`, then cast to ``dtype``.

    Raises:
        ValueError: ``n_samples`` < 2.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    p = (torch.arange(n_samples, device=device, dtype=torch.float64) + 0.5) / n_samples
    return (math.sqrt(2.0) * torch.special.erfinv(2.0 * p - 1.0)).to(dtype)


#: One quantile tensor per (n, device), shared by the PN layers (see ``shared_quantiles``).
_SHARED_QUANTILES: dict[tuple[int, torch.device], Tensor] = {}


def shared_quantiles(n_samples: int, device: torch.device | str | None) -> Tensor:
    """The float64 :func:`proxy_quantiles` of ``n_samples`` on ``device``, one tensor per
    (n, device) for every PN layer: under ``torch.compile`` each distinct tensor is one more graph
    input with its own guards and checks, paid per layer and step whatever the batch
    (``benchmarks/compiled_layer_cost.py``, docs/PERFORMANCE.md). A layer that needs other
    quantiles gets its own tensor by assignment (``layer.quantiles = q``); editing the shared one
    in place would edit every layer's. The entry is recomputed and compared on every call (at
    construction and ``.to()`` only), so a new layer never receives an edited tensor. Only plain
    tensors with data are shared: a layer built on the meta device, under a fake-tensor mode or
    in inference mode gets its own (an inference tensor could not be saved for backward)."""
    q = proxy_quantiles(n_samples, device=device)
    if type(q) is not Tensor or q.is_meta or q.is_inference():
        return q
    key = (n_samples, q.device)
    shared = _SHARED_QUANTILES.get(key)
    if shared is None or not torch.equal(shared, q):
        _SHARED_QUANTILES[key] = shared = q
    return shared


def proxy_moments(
    weight: Tensor,
    bias: Tensor,
    proxy_weight: Tensor | None,
    proxy_bias: Tensor | None,
    act: Activation,
    quantiles: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population variance of ``φ(γ Y~ + β)``, ``Y~ ~ N(β~, (1 + γ~)²)``.

    Computed in at least float32 (float64 parameters give float64 moments), whatever the dtype of
    the activations, so that PN statistics stay accurate under mixed precision.

    Args:
        weight, bias: γ and β, shape (C,).
        proxy_weight, proxy_bias: γ~ and β~, shape (C,), or ``None`` for zero.
        act: the activation φ (name or callable).
        quantiles: the standard-normal quantiles, shape (n,).

    Returns:
        ``(mean, var)``, each of shape (C,).
    """
    dtype = torch.promote_types(weight.dtype, torch.float32)
    q = quantiles.to(dtype).unsqueeze(0)  # (1, n)
    if proxy_weight is not None:
        q = q * (1.0 + proxy_weight.to(dtype)).unsqueeze(1)
    if proxy_bias is not None:
        q = q + proxy_bias.to(dtype).unsqueeze(1)
    z = resolve_act(act)(
        torch.addcmul(bias.to(dtype).unsqueeze(1), q, weight.to(dtype).unsqueeze(1))
    )
    var, mean = torch.var_mean(z, dim=1, correction=0)
    return mean, var


def proxy_norm_act(
    y: Tensor,
    weight: Tensor,
    bias: Tensor,
    proxy_weight: Tensor | None = None,
    proxy_bias: Tensor | None = None,
    act: Activation = "relu",
    eps: float = 0.03,
    n_samples: int = 256,
    scale: bool = True,
    quantiles: Tensor | None = None,
) -> Tensor:
    """Proxy-normalized activation step, Eq. (7). See :class:`ProxyNormAct`.

    Args:
        y: normalized pre-activations, (N, C) or (N, C, H, W).
        weight, bias: γ, β of shape (C,).
        proxy_weight, proxy_bias: γ~, β~ of shape (C,), or ``None`` (zero: Y~ ~ N(0, 1)).
        act: activation φ by name or callable.
        eps: PN's stability constant (0.03 in the paper).
        n_samples: number of proxy quantiles (ignored when ``quantiles`` is given).
        scale: divide by the proxy std; ``False`` only subtracts the proxy mean.
        quantiles: precomputed :func:`proxy_quantiles` (modules pass their buffer).

    Returns:
        A tensor of the shape and dtype of ``y``.
    """
    if quantiles is None:
        check_positive("eps", eps)
        quantiles = proxy_quantiles(n_samples, device=y.device)
    fn = resolve_act(act)
    mean, var = proxy_moments(weight, bias, proxy_weight, proxy_bias, fn, quantiles)
    shape = (-1,) + (1,) * (y.dim() - 2)
    z = fn(torch.addcmul(bias.to(y.dtype).view(shape), y, weight.to(y.dtype).view(shape)))
    if not scale:
        return z - mean.to(y.dtype).view(shape)
    inv_std = torch.rsqrt(var + eps)
    return torch.addcmul(
        (-mean * inv_std).to(y.dtype).view(shape), z, inv_std.to(y.dtype).view(shape)
    )
