"""EvoNorm-S0 (Liu et al., "Evolving Normalization-Activation Layers", 2020).

A batch-independent baseline of Labatie et al., NeurIPS 2021 (Table 4); docs/METHOD.md §1. It
replaces both the norm step and the activation step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from proxynorm.layers.kernels import upcast
from proxynorm.layers.validation import (
    check_input,
    check_num_features,
    check_positive,
    resolve_groups,
)


class EvoNormS0(nn.Module):
    r"""EvoNorm-S0 norm-and-activation step.

    .. math:: \mathrm{out} = \frac{x \cdot \mathrm{sigmoid}(v_c x)}
                                  {\sqrt{\sigma^2_{(C/G,H,W)}(x) + \epsilon}}\,\gamma_c + \beta_c

    The group variance is the population variance per sample over (C/G, H, W), computed in float32
    for low-precision inputs. With ``apply_act=False`` the sigmoid gate is dropped and the layer is
    the plain group-std normalization with affine, ``x / std · γ + β`` (timm instead skips the
    normalization altogether in that case). Unlike GN, EvoNorm-S0 is not invariant to the scale of
    its input, because the gate ``sigmoid(v x)`` sees the raw scale.

    Args:
        num_features: number of channels C.
        groups: number of groups G (must divide C); ``None``: 32, capped at C and reduced to
            gcd(32, C) if it does not divide C.
        group_size: channels per group, instead of ``groups``.
        eps: stability constant (> 0).
        apply_act: keep the ``x · sigmoid(v x)`` numerator.

    Parameters: ``weight`` (γ, init 1), ``bias`` (β, init 0), ``v`` (init 1; absent without act).

    Shape:
        Input (N, C) or (N, C, H, W); output the same.
    """

    def __init__(
        self,
        num_features: int,
        groups: int | None = None,
        group_size: int | None = None,
        eps: float = 1e-5,
        apply_act: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = check_num_features(num_features)
        self.groups = resolve_groups(num_features, groups, group_size, default=32)
        self.eps = check_positive("eps", eps)
        self.apply_act = bool(apply_act)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        if self.apply_act:
            self.v = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("v", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.v is not None:
            nn.init.ones_(self.v)

    def _inv_std(self, x32: Tensor) -> Tensor:
        if x32.numel() == 0:  # an empty batch: nothing to normalize
            return torch.ones_like(x32)
        per_sample = x32.shape[1:].numel()
        grouped = x32.reshape(x32.shape[0], self.groups, per_sample // self.groups)
        var = grouped.var(dim=2, correction=0, keepdim=True)
        return torch.rsqrt(var + self.eps).expand_as(grouped).reshape(x32.shape)

    def standardize(self, x: Tensor) -> Tensor:
        """The normalization part ``x / sqrt(σ²_group + eps)`` (no gate, no affine)."""
        return (upcast(x) * self._inv_std(upcast(x))).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.num_features, type(self).__name__)
        x32 = upcast(x)
        shape = (-1,) + (1,) * (x.dim() - 2)
        num = x32 * torch.sigmoid(self.v.view(shape) * x32) if self.v is not None else x32
        out = torch.addcmul(
            self.bias.view(shape), num * self._inv_std(x32), self.weight.view(shape)
        )
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, groups={self.groups}, eps={self.eps}, apply_act={self.apply_act}"
        )
