"""The four-term power decomposition of normalized pre-activations.

Labatie et al., NeurIPS 2021, Eq. (5); docs/METHOD.md §3. For channel c of y (inputs x,
positions α)::

    E[y_c²] = μ_{x,α}(y_c)²        (1) dataset scale: channel-wise collapse when it dominates
            + σ_x(μ_α(y_c))²       (2) instance scale: variability of instance means
            + μ_x(σ_α(y_c))²       (3) pixel scale: average instance std
            + σ_x(σ_α(y_c))²       (4) pixel scale: variability of instance stds

with population statistics throughout. The identity is exact for any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TERM_NAMES = ("dataset mean", "instance means", "instance stds (avg)", "instance stds (var)")


@dataclass(frozen=True)
class PowerDecomposition:
    """The decomposition of one layer's y.

    Attributes:
        terms: (4, C) float64, the four terms per channel.
        power: (C,) float64, E[y_c²] per channel (= terms.sum(0)).
    """

    terms: Tensor
    power: Tensor

    @classmethod
    def from_moments(
        cls, mean_of_means: Tensor, var_of_means: Tensor, mean_of_stds: Tensor,
        var_of_stds: Tensor, power: Tensor,
    ) -> PowerDecomposition:  # fmt: skip
        """Eq. (5) from the per-channel moments over instances of the instance means μ_α(y_c)
        and instance stds σ_α(y_c), and E[y_c²]: the one place the four terms are assembled
        (:func:`power_decomposition` and ``diagnose``'s streamed sums both come here)."""
        terms = torch.stack([mean_of_means.square(), var_of_means.clamp_min(0),
                             mean_of_stds.square(), var_of_stds.clamp_min(0)])  # fmt: skip
        return cls(terms=terms, power=power)

    @property
    def channel_average(self) -> Tensor:
        """(4,) the terms averaged over channels (the layer-level decomposition)."""
        return self.terms.mean(dim=1)

    @property
    def layer_power(self) -> float:
        """Channel average of E[y_c²]: 1 for every norm of the paper (Proposition 1)."""
        return float(self.power.mean())

    @property
    def proportions(self) -> Tensor:
        """(4,) the channel-averaged terms divided by the layer power; they sum to 1."""
        return self.channel_average / self.power.mean().clamp_min(1e-300)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: channel averages, proportions and layer power (per-channel terms omitted)."""
        return {
            "terms": dict(zip(TERM_NAMES, self.channel_average.tolist(), strict=True)),
            "proportions": dict(zip(TERM_NAMES, self.proportions.tolist(), strict=True)),
            "layer_power": self.layer_power,
            "channels": int(self.power.numel()),
        }


def power_decomposition(y: Tensor) -> PowerDecomposition:
    """Decompose y, shape (N, C, H, W) (or (N, C), one position), into the four terms of Eq. (5).

    Accumulates in float64, so the terms sum to E[y_c²] to ~1e-15 relative.

    Raises:
        ValueError: y is not 2-D or 4-D.
    """
    if y.dim() not in (2, 4):
        raise ValueError(
            f"power_decomposition expects y of shape (N, C, H, W) or (N, C), got {tuple(y.shape)}"
        )
    y = y.detach().to(torch.float64)
    if y.dim() == 2:
        y = y[:, :, None, None]
    var_a, mean_a = torch.var_mean(y.flatten(2), dim=2, correction=0)  # (N, C) per instance
    std_a = var_a.sqrt()
    var_mx, mean_mx = torch.var_mean(mean_a, dim=0, correction=0)
    var_sx, mean_sx = torch.var_mean(std_a, dim=0, correction=0)
    power = y.square().mean(dim=(0, 2, 3))
    return PowerDecomposition.from_moments(mean_mx, var_mx, mean_sx, var_sx, power)
