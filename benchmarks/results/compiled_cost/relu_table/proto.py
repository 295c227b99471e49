"""Prototype (not shipped): ReLU's proxy sums (count, Σ q, Σ q² over the active quantiles) with
no C × n pass, for the standard quantiles q_i = Φ⁻¹((i + 1/2)/n). Per channel, the number k of
quantiles below the kink t = −B/A is floor(n Φ(t) + 1/2) up to one where t is within rounding of
a quantile; one comparison of A q + B > 0 on each side of k settles it as the counting pass
would, and the sums are reads from prefix and suffix tables. Same counts and sums as
``fused_proxy_norm._relu_sums`` (checked for n = 33 and 256, kinks on quantiles, A = 0)."""

import math

import torch
from proxynorm.layers.proxy_norm import proxy_quantiles

_TABLES = {}


def table(n):
    """(q, (4, n + 1) float64: sums of q and q² below index k, then above it)."""
    if n not in _TABLES:
        q = proxy_quantiles(n)
        z = torch.zeros(1, dtype=torch.float64)

        def below(v):
            return torch.cat([z, v.cumsum(0)])

        def above(v):
            return torch.cat([v.flip(0).cumsum(0).flip(0), z])

        _TABLES[n] = (q, torch.stack([below(q), below(q * q), above(q), above(q * q)]))
    return _TABLES[n]


def sums(a, b, q):
    n = q.numel()
    qs, tab = table(n)
    f64 = torch.float64
    a, b = a.to(f64), b.to(f64)
    pos = a > 0
    phi = 0.5 * torch.special.erfc(b / (a * math.sqrt(2.0)))  # Φ(−B/A)
    k = torch.floor(n * phi + 0.5).nan_to_num(0.0).clamp(0, n).to(torch.int64)

    def upper(i):  # u~_i on the side of the kink that holds the largest quantile
        return (torch.addcmul(b, a, qs[i.clamp(0, n - 1)]) > 0) == pos

    k = k - ((k > 0) & upper(k - 1)).to(torch.int64)
    k = k + ((k < n) & ~upper(k)).to(torch.int64)
    k = torch.where(a == 0, torch.where(b > 0, n, 0), k)  # A = 0: all or none (read as A < 0)
    cnt = torch.where(pos, n - k, k).to(f64)
    return torch.stack([cnt, torch.where(pos, tab[2][k], tab[0][k]),
                        torch.where(pos, tab[3][k], tab[1][k])])  # fmt: skip


table(256)
table(16)
