"""Stochastic depth (Huang et al., 2016): drop a residual branch per sample during training."""

from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero the whole residual branch of each sample with probability ``p`` in training, scaling
    survivors by ``1 / (1 - p)``; the identity in eval mode or when ``p == 0``.

    Args:
        p: drop probability in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"
