"""EfficientNet-B0/B2 with any norm spec, and the paper's group-conv variant.

Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019 (MBConv blocks with
squeeze-excite, swish). Labatie et al., NeurIPS 2021 (docs/METHOD.md §5, Appendix A.1) also train a
variant whose depthwise convs become group convs of group size 16 with expansion 4 instead of 6
(``*_g16``); PN is off inside SE blocks (no norm precedes their activation), WS is off in SE blocks
and the classifier, and the final affine of each MBConv block is a per-channel scale when PN has
β~, γ~ (a single affine with Evo-S0).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from proxynorm.layers import DropPath, resolve_act
from proxynorm.models.base import ProxyNormModel
from proxynorm.models.builder import LayerFactory, drop_path_rates, init_weights

# (repeats, kernel, stride, expansion, out channels) per stage of EfficientNet-B0.
B0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
#: name -> (width multiplier, depth multiplier, resolution)
SCALING = {"b0": (1.0, 1.0, 224), "b2": (1.1, 1.2, 260)}


def round_channels(channels: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: nearest multiple of ``divisor``, never 10% below."""
    new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * channels else new


class SqueezeExcite(nn.Module):
    """Squeeze-excite gate: pool -> conv1x1 (bias) -> φ -> conv1x1 (bias) -> sigmoid.
    No norm and no PN inside; plain convs (no WS)."""

    def __init__(self, channels: int, reduced: int, act) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = resolve_act(act)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * s.sigmoid()


class MBConv(nn.Module):
    """Inverted residual: [conv1x1 -> norm-act] -> (depthwise|group) conv -> norm-act -> SE ->
    conv1x1 -> norm (no activation), plus the identity when shapes allow."""

    def __init__(
        self,
        f: LayerFactory,
        in_chs: int,
        out_chs: int,
        kernel: int,
        stride: int,
        expansion: int,
        group_size: int | None,
        drop_path: float,
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.conv_expand = f.conv(in_chs, mid, 1) if expansion != 1 else None
        self.norm_expand = f.norm_act(mid) if expansion != 1 else None
        groups = mid if group_size is None else mid // math.gcd(group_size, mid)
        self.conv_dw = f.conv(mid, mid, kernel, stride, groups=groups)
        self.norm_dw = f.norm_act(mid)
        self.se = SqueezeExcite(mid, max(1, int(in_chs * se_ratio)), f.act)
        self.conv_project = f.conv(mid, out_chs, 1)
        self.norm_project = f.block_output_norm(out_chs)
        self.has_skip = stride == 1 and in_chs == out_chs
        self.drop_path = DropPath(drop_path) if self.has_skip else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.conv_expand is not None:
            out = self.norm_expand(self.conv_expand(out))
        out = self.se(self.norm_dw(self.conv_dw(out)))
        out = self.norm_project(self.conv_project(out))
        return x + self.drop_path(out) if self.has_skip else out


class EfficientNet(ProxyNormModel):
    """EfficientNet with a norm spec.

    Args:
        f: the model's :class:`LayerFactory` (activation: swish by default).
        variant: ``"b0"`` or ``"b2"``.
        group_size: ``None`` for depthwise convs, else group size of the group convs (16).
        expansion: expansion ratio of the expanded stages (6 originally, 4 in the g16 variant).
        num_classes, in_chans: classifier outputs and input channels.
        width_mult: extra width multiplier (tests use < 1 for speed).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the last block, linear in block index from 0.

    All conv and linear weights use the paper's truncated-normal 1/sqrt(fan_in) initialization
    (the original EfficientNet scales some kernels by fan-out instead; not reproduced here).
    """

    def __init__(
        self,
        f: LayerFactory,
        variant: str = "b0",
        group_size: int | None = None,
        expansion: int = 6,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        w_mult, d_mult, self.input_size = SCALING[variant]
        w_mult *= width_mult
        self.in_chans, self.min_size = in_chans, 32
        stem_chs = round_channels(32 * w_mult)
        self.conv_stem = f.conv(in_chans, stem_chs, 3, stride=2)
        self.norm_stem = f.norm_act(stem_chs)
        stages = [
            (math.ceil(r * d_mult), k, s, e, round_channels(c * w_mult))
            for r, k, s, e, c in B0_STAGES
        ]
        rates = drop_path_rates(sum(r for r, *_ in stages), drop_path_rate)
        blocks, chs, idx = [], stem_chs, 0
        for repeats, kernel, stride, exp, out_chs in stages:
            for i in range(repeats):
                exp_i = exp if exp == 1 else expansion
                blocks.append(
                    MBConv(
                        f,
                        chs,
                        out_chs,
                        kernel,
                        stride if i == 0 else 1,
                        exp_i,
                        group_size,
                        rates[idx],
                    )
                )
                chs, idx = out_chs, idx + 1
        self.blocks = nn.Sequential(*blocks)
        self.num_features = round_channels(1280 * w_mult)
        self.conv_head = f.conv(chs, self.num_features, 1)
        self.norm_head = f.norm_act(self.num_features, final=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Features after the head norm-act, before pooling."""
        self.check_input(x)
        x = self.blocks(self.norm_stem(self.conv_stem(x)))
        return self.norm_head(self.conv_head(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.classifier(self.dropout(x))
