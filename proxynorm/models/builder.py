"""How models turn one norm spec into their layers, with the paper's per-architecture rules.

Labatie et al., NeurIPS 2021, Appendix A.1: every activation step directly follows a norm step;
the norm-act step before final pooling has PN's scaling off; WS is off in classifiers and SE blocks
and WS ResNet blocks get an extra per-channel scale after their last conv; in EfficientNets the
final affine of each MBConv block becomes a per-channel scale when PN has β~, γ~, and a single
affine (no norm) with Evo-S0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from proxynorm.layers import AffineAct, NormSpec, conv2d, norm_act, parse_spec
from proxynorm.layers.activation import Activation

#: create_model keyword arguments that configure the norm layers rather than the architecture.
NORM_KWARGS = ("eps", "momentum", "norm_batch", "n_samples", "proxy_eps", "group_size")


@dataclass(frozen=True)
class LayerFactory:
    """Norm-act steps and convs for one model, resolved once from its norm spec.

    Attributes:
        spec: the parsed norm spec.
        act: the model's activation φ.
        groups: GN/Evo-S0 groups (``None``: 8 with PN, 32 without).
        proxy_affine: learn PN's β~, γ~.
        norm_kwargs: passed to every norm-act layer (see :data:`NORM_KWARGS`).
    """

    spec: NormSpec
    act: Activation = "relu"
    groups: int | None = None
    proxy_affine: bool = True
    norm_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        norm: str | NormSpec,
        act: Activation,
        groups: int | None = None,
        proxy_affine: bool = True,
        **norm_kwargs: Any,
    ) -> LayerFactory:
        return cls(parse_spec(norm), act, groups, proxy_affine, norm_kwargs)

    def _kwargs(self, **extra: Any) -> dict[str, Any]:
        kwargs = dict(self.norm_kwargs)
        chosen = self.spec.select(groups=self.groups, group_size=kwargs.pop("group_size", None),
                                  proxy_affine=self.proxy_affine, **extra)  # fmt: skip
        return {**kwargs, **chosen}

    def norm_act(self, channels: int, final: bool = False) -> nn.Module:
        """A norm-act step; ``final=True`` for the one before global pooling (PN scaling off)."""
        extra = {"proxy_scale": False} if final else {}
        return norm_act(self.spec, channels, act=self.act, **self._kwargs(**extra))

    def norm(self, channels: int) -> nn.Module:
        """The plain norm with affine and no activation (e.g. before a residual add)."""
        return norm_act(self.spec, channels, apply_act=False, **self._kwargs())

    def block_output_norm(self, channels: int) -> nn.Module:
        """The norm after an EfficientNet block's projection conv (paper, Appendix A.1)."""
        if self.spec.base == "evos0":
            return AffineAct(channels, act=None)  # "a single affine transformation"
        if self.spec.pn and self.proxy_affine:
            return norm_act(self.spec, channels, apply_act=False, bias=False, **self._kwargs())
        return self.norm(channels)

    def ws_scale(self, channels: int) -> nn.Module:
        """WS ResNet blocks' extra per-channel scale after the last conv; identity without WS."""
        return AffineAct(channels, act=None, bias=False) if self.spec.ws else nn.Identity()

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        **kwargs: Any,
    ) -> nn.Conv2d:
        """A conv, weight-standardized when the spec has ``+ws``; no bias."""
        return conv2d(
            self.spec,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            groups=groups,
            **kwargs,
        )


def drop_path_rates(num_blocks: int, drop_path_rate: float) -> list[float]:
    """Stochastic-depth rate per block, linear in block index from 0 to ``drop_path_rate``."""
    return [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


def trunc_normal_(
    tensor: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill with N(0, std²) truncated to ±2 std (inverse-CDF sampling; honours ``generator``)."""
    lo = 0.5 * (1 + math.erf(-2 / math.sqrt(2)))
    with torch.no_grad():
        u = torch.empty_like(tensor, dtype=torch.float64).uniform_(lo, 1 - lo, generator=generator)
        tensor.copy_(torch.special.erfinv(2 * u - 1) * (std * math.sqrt(2)))
    return tensor


def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """The paper's initialization: conv and linear weights from a truncated normal scaled by
    1/sqrt(fan_in), biases 0 (norm-act layers keep their own γ = 1, β = 0, β~ = γ~ = 0)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            trunc_normal_(m.weight, fan_in**-0.5, generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
