"""Theorem 1's collapse bound and the channel-wise linearity ratio.

Labatie et al., NeurIPS 2021, Theorem 1 and Appendix C.2, as restated in docs/METHOD.md §4.
"""

from __future__ import annotations

import torch
from torch import Tensor


def collapse_bound(rho1: float, gamma_std: float, beta_std: float, depth: int) -> Tensor:
    """Theorem 1's bound on ``1 − ρ(y^l)`` for l = 1..depth in random nets with LN.

    .. math:: 1 - \\rho(y^l) \\lesssim (1 - \\rho(y^1))
              \\left(\\frac{\\nu_\\gamma^2}{\\nu_\\gamma^2 + \\nu_\\beta^2}\\right)^{l-1},
              \\quad \\nu_\\gamma^2 = 1 + \\sigma_\\gamma^2,\\ \\nu_\\beta^2 = \\sigma_\\beta^2

    for γ ~ N(1, gamma_std²), β ~ N(0, beta_std²); near-equality when φ is the identity.

    Returns:
        float64 tensor of shape (depth,).
    """
    if not 0.0 <= rho1 <= 1.0:
        raise ValueError(f"rho1 must be in [0, 1], got {rho1}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    nu_g2, nu_b2 = 1.0 + gamma_std**2, beta_std**2
    factor = nu_g2 / (nu_g2 + nu_b2)
    return (1.0 - rho1) * factor ** torch.arange(depth, dtype=torch.float64)


def linearity_ratio(y: Tensor, z: Tensor, per_channel: bool = False) -> Tensor:
    """Channel-wise nonlinearity ratio of ``z`` as a function of ``y`` (docs/METHOD.md §4).

    In channel c, fit ``z_c ≈ a_c y_c + b_c`` by least squares over inputs and positions;
    ``NL_c = E[(z_c − a_c y_c − b_c)²] / Var(z_c) = 1 − corr(y_c, z_c)²``. A channel whose ``z`` is
    constant (e.g. a dead ReLU) or whose ``y`` is constant is exactly linear: ``NL_c = 0``, never
    NaN. NL → 0 when collapse makes the layer channel-wise linear; for ReLU on N(0, 1), NL ≈ 0.27.

    Args:
        y, z: tensors of the same shape (N, C, ...), e.g. a layer's y^l and z^l.
        per_channel: return the (C,) ratios instead of their mean.

    Returns:
        float64 scalar (mean over channels) or (C,) tensor.
    """
    if y.shape != z.shape or y.dim() < 2:
        raise ValueError(
            f"y and z must have the same shape (N, C, ...), got {tuple(y.shape)} "
            f"and {tuple(z.shape)}"
        )
    c = y.shape[1]
    y = y.detach().to(torch.float64).transpose(0, 1).reshape(c, -1)
    z = z.detach().to(torch.float64).transpose(0, 1).reshape(c, -1)
    yc, zc = y - y.mean(1, keepdim=True), z - z.mean(1, keepdim=True)
    var_y, var_z = yc.square().mean(1), zc.square().mean(1)
    cov = (yc * zc).mean(1)
    ratio = nonlinearity(var_y, var_z, cov, y.square().mean(1), z.square().mean(1))
    return ratio if per_channel else ratio.mean()


def nonlinearity(
    var_y: Tensor, var_z: Tensor, cov_yz: Tensor, power_y: Tensor, power_z: Tensor
) -> Tensor:
    """Per-channel ``NL_c = 1 − corr(y_c, z_c)²`` from the channels' variances, covariance and
    powers E[y_c²], E[z_c²]: the one place the ratio and its floor are computed
    (:func:`linearity_ratio` and ``diagnose``'s streamed sums both come here).

    A variance at rounding-error level of the values (≤ 1e-20 E[·²] + 1e-24) counts as constant,
    and a constant channel is exactly linear: ``NL_c = 0``, never NaN.
    """
    tiny = 1e-24 + 1e-20 * torch.maximum(power_y, power_z)
    degenerate = (var_y <= tiny) | (var_z <= tiny)
    r2 = cov_yz.square() / (var_y * var_z).where(~degenerate, torch.ones_like(var_y))
    return torch.where(degenerate, torch.zeros_like(r2), (1.0 - r2).clamp_min(0.0))
