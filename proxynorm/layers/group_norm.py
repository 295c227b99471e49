"""Batch-independent norm-act steps: GroupNorm (GN), LayerNorm (LN) and InstanceNorm (IN).

Labatie et al., NeurIPS 2021, §3 and docs/METHOD.md §1. All three standardize per sample over a
group of channels and all spatial positions, with the population variance:

* GN(G): over (C/G, H, W) per sample and group;
* LN: GroupNorm with one group, i.e. over (C, H, W) — *not* timm's channels-only ``LayerNorm2d``;
* IN: GroupNorm with C groups, i.e. over (H, W) per sample and channel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from proxynorm.layers.activation import Activation
from proxynorm.layers.kernels import dense, group_norm
from proxynorm.layers.norm_act import NormAct, NormStep
from proxynorm.layers.validation import check_num_features, check_positive, resolve_groups


class GroupNormStep(NormStep):
    r"""Affine-free group standardization :math:`y = (x - \mu_g) / \sqrt{\sigma_g^2 + \epsilon}`.

    Statistics per sample over (C/G, H, W), population variance, computed in float32 for
    float16/bfloat16 inputs; the output has the input's dtype.
    """

    def __init__(self, num_features: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.groups = resolve_groups(num_features, groups)
        self.eps = check_positive("eps", eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_affine(x, None, None)

    def forward_affine(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        xf = dense(x)
        w, b = (None if t is None else t.to(xf.dtype) for t in (weight, bias))
        return group_norm(xf, self.groups, w, b, self.eps)[0].to(x.dtype)

    def fused_groups(self) -> int | None:
        return self.groups

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"


class GroupNormAct(NormAct):
    r"""GroupNorm step + activation step (optionally proxy-normalized: GN+PN).

    .. math:: y = \frac{x - \mu_{(C/G,H,W)}(x)}{\sqrt{\sigma^2_{(C/G,H,W)}(x) + \epsilon}},\qquad
              z = \varphi(\gamma y + \beta)\ \text{or Eq. (7) with PN}

    Population variance over each sample's group of channels and all positions (docs/METHOD.md §1).

    Args:
        num_features: number of channels C.
        groups: number of groups G (must divide C). ``None`` (and no ``group_size``): 8 with PN,
            32 without, capped at C and reduced to gcd(default, C) if it does not divide C.
        group_size: channels per group, instead of ``groups``.
        act: activation φ (name or callable).
        eps: the norm's stability constant (> 0).
        proxy: proxy-normalize the activation step (GN+PN).
        **kwargs: activation-step options of :class:`NormAct`: ``apply_act`` (``False`` gives
            exactly GroupNorm with affine), ``bias``, ``proxy_affine``, ``proxy_eps``,
            ``n_samples``, ``proxy_scale``.

    Shape:
        Input (N, C) or (N, C, H, W); output the same.

    Example::

        >>> layer = GroupNormAct(64, proxy=True)        # GN(8)+PN with ReLU
        >>> out = layer(torch.randn(2, 64, 8, 8))
    """

    def __init__(
        self,
        num_features: int,
        groups: int | None = None,
        group_size: int | None = None,
        act: Activation = "relu",
        eps: float = 1e-5,
        proxy: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        check_num_features(num_features)
        g = resolve_groups(num_features, groups, group_size, default=8 if proxy else 32)
        norm = GroupNormStep(num_features, g, eps)
        super().__init__(num_features, norm, act, proxy=proxy, device=device, dtype=dtype, **kwargs)

    @property
    def groups(self) -> int:
        return self.norm.groups


class LayerNormAct(GroupNormAct):
    """LayerNorm step (GroupNorm with one group: statistics over C, H, W) + activation step.

    This is the paper's LN for conv maps, not timm's channels-only ``LayerNorm2d``. Arguments as
    :class:`GroupNormAct`, without ``groups``.
    """

    def __init__(self, num_features: int, act: Activation = "relu", **kwargs: Any) -> None:
        super().__init__(num_features, groups=1, act=act, **kwargs)


class InstanceNormAct(GroupNormAct):
    """InstanceNorm step (GroupNorm with C groups: statistics over H, W) + activation step.

    Needs spatial dimensions: input (N, C, H, W). Arguments as :class:`GroupNormAct`, without
    ``groups``.
    """

    def __init__(self, num_features: int, act: Activation = "relu", **kwargs: Any) -> None:
        super().__init__(num_features, groups=check_num_features(num_features), act=act, **kwargs)
        self._min_dim = 4  # one value per channel and sample has no variance to normalize
