"""Independent float64 implementations of docs/METHOD.md's formulas, written loop-style."""

import math

import torch
import torch.nn.functional as F

ACTS = {
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "leaky_relu": lambda t: torch.where(t > 0, t, 0.01 * t),
    "identity": lambda t: t,
}


def reference_quantiles(n):
    p = [(i + 0.5) / n for i in range(n)]
    return torch.tensor(
        [
            math.sqrt(2.0)
            * torch.special.erfinv(torch.tensor(2 * v - 1.0, dtype=torch.float64)).item()
            for v in p
        ],
        dtype=torch.float64,
    )


def reference_pn(y, gamma, beta, gamma_t, beta_t, act, eps=0.03, n=256, scale=True):
    """docs/METHOD.md §2 Eq. (7), one channel at a time, float64."""
    phi = ACTS[act]
    q = reference_quantiles(n)
    out = torch.empty_like(y, dtype=torch.float64)
    for c in range(y.shape[1]):
        g, b = gamma[c].double(), beta[c].double()
        gt = 0.0 if gamma_t is None else gamma_t[c].double()
        bt = 0.0 if beta_t is None else beta_t[c].double()
        proxy = phi(g * (bt + (1 + gt) * q) + b)
        mean = proxy.mean()
        var = ((proxy - mean) ** 2).mean()  # population variance
        z = phi(g * y[:, c].double() + b) - mean
        out[:, c] = z / torch.sqrt(var + eps) if scale else z
    return out


def reference_standardize(x, groups, eps):
    """Group standardization per sample over (C/G, H, W) with the population variance."""
    n, c = x.shape[:2]
    xg = x.double().reshape(n, groups, -1)
    mean = xg.mean(dim=2, keepdim=True)
    var = ((xg - mean) ** 2).mean(dim=2, keepdim=True)
    return ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)


def reference_batch_standardize(x, eps):
    dims = [0] + list(range(2, x.dim()))
    mean = x.double().mean(dim=dims, keepdim=True)
    var = ((x.double() - mean) ** 2).mean(dim=dims, keepdim=True)
    return (x.double() - mean) / torch.sqrt(var + eps)


def assert_same_values_and_gradients(out, ref, inputs, rtol=0.0, atol=1e-10):
    """``out`` equals ``ref`` to 1e-10 whatever the tolerances, and their gradients with respect to
    every tensor of ``inputs`` (``None`` entries skipped), for one random output gradient, agree
    to ``rtol``/``atol``."""
    grad = torch.randn_like(ref)
    inputs = [a for a in inputs if a is not None]
    expected = torch.autograd.grad(ref, inputs, grad)
    got = torch.autograd.grad(out, inputs, grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    for e, o in zip(expected, got, strict=True):
        torch.testing.assert_close(o, e, rtol=rtol, atol=atol)
