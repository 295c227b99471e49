"""Weight-standardized convolution (WS; Qiao et al., "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization", 2019), as used by Labatie et al., NeurIPS 2021
(GN+WS, LN+WS baselines); docs/METHOD.md §1."""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Floor on the weight variance: only a filter with all-equal weights reaches it, where it turns
# 0/0 into 0 instead of NaN. It never changes a non-degenerate filter's standardization.
_MIN_VAR = 1e-12


class WSConv2d(nn.Conv2d):
    r"""``nn.Conv2d`` whose kernel is standardized per output channel before every use.

    .. math:: \hat\omega = \frac{\omega - \mu(\omega)}{\sqrt{\sigma^2(\omega) + \epsilon}}

    mean and *population* variance over (in_channels / groups, kh, kw) of each output channel.
    The paper uses ``eps = 0`` (the default). Standardization is computed in at least float32.
    Arguments are those of :class:`torch.nn.Conv2d`, plus ``eps`` (>= 0).

    Example::

        >>> conv = WSConv2d(16, 32, 3, padding=1)
        >>> out = conv(torch.randn(2, 16, 8, 8))
    """

    def __init__(self, *args, eps: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)

    def standardized_weight(self) -> Tensor:
        """The standardized kernel ω̂ (same shape and dtype as ``weight``)."""
        w = self.weight
        w32 = w.to(torch.promote_types(w.dtype, torch.float32))
        # Two passes (population variance): on CPU faster than torch.var_mean forward and
        # backward for mid-sized kernels, slightly slower for tiny ones
        # (benchmarks/variance_rows.py).
        centered = w32 - w32.mean(dim=(1, 2, 3), keepdim=True)
        var = (centered * centered).mean(dim=(1, 2, 3), keepdim=True)
        return (centered * torch.rsqrt((var + self.eps).clamp_min(_MIN_VAR))).to(w.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"
