"""Pre-activation ("v2") ResNets and ResNeXts with any norm spec.

He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016 (v2 ordering: each
residual block is norm-act -> conv ..., and the network ends with a norm-act before global pooling);
Xie et al., "Aggregated Residual Transformations", CVPR 2017 (ResNeXt, same ordering here).
As trained by Labatie et al., NeurIPS 2021 (docs/METHOD.md §5): CIFAR ResNets of depth 6n+2 with
widths 16/32/64, ImageNet ResNet-50/101 and ResNeXt-50/101 32x4d.
"""

from __future__ import annotations

from torch import Tensor, nn

from proxynorm.layers import DropPath
from proxynorm.models.base import ProxyNormModel
from proxynorm.models.builder import LayerFactory, drop_path_rates, init_weights


class PreActBasicBlock(nn.Module):
    """norm-act -> conv3x3 -> norm-act -> conv3x3 (+ WS scale), plus the shortcut."""

    expansion = 1

    def __init__(
        self, f: LayerFactory, in_chs: int, planes: int, stride: int, drop_path: float, **_
    ) -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.norm1 = f.norm_act(in_chs)
        self.conv1 = f.conv(in_chs, planes, 3, stride)
        self.norm2 = f.norm_act(planes)
        self.conv2 = f.conv(planes, out_chs, 3)
        self.scale = f.ws_scale(out_chs)
        self.downsample = (
            f.conv(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x_pre = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        out = self.scale(self.conv2(self.norm2(self.conv1(x_pre))))
        return shortcut + self.drop_path(out)


class PreActBottleneck(nn.Module):
    """norm-act -> conv1x1 -> norm-act -> conv3x3 (grouped for ResNeXt) -> norm-act -> conv1x1."""

    expansion = 4

    def __init__(
        self,
        f: LayerFactory,
        in_chs: int,
        planes: int,
        stride: int,
        drop_path: float,
        cardinality: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        mid = int(planes * base_width / 64) * cardinality
        out_chs = planes * self.expansion
        self.norm1 = f.norm_act(in_chs)
        self.conv1 = f.conv(in_chs, mid, 1)
        self.norm2 = f.norm_act(mid)
        self.conv2 = f.conv(mid, mid, 3, stride, groups=cardinality)
        self.norm3 = f.norm_act(mid)
        self.conv3 = f.conv(mid, out_chs, 1)
        self.scale = f.ws_scale(out_chs)
        self.downsample = (
            f.conv(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else None
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x_pre = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_pre)
        out = self.conv2(self.norm2(self.conv1(x_pre)))
        out = self.scale(self.conv3(self.norm3(out)))
        return shortcut + self.drop_path(out)


class PreActResNet(ProxyNormModel):
    """A pre-activation ResNet/ResNeXt.

    Args:
        f: the model's :class:`LayerFactory` (norm spec, activation, groups...).
        block: :class:`PreActBasicBlock` or :class:`PreActBottleneck`.
        layers: blocks per stage.
        widths: ``planes`` per stage (block output = planes × expansion).
        stem: ``"cifar"`` (conv3x3) or ``"imagenet"`` (conv7x7 stride 2 + max-pool).
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the last block; linear in block index from 0.
        cardinality, base_width: ResNeXt's groups and width per group (bottlenecks only).
    """

    def __init__(
        self,
        f: LayerFactory,
        block: type[nn.Module],
        layers: list[int],
        widths: list[int],
        stem: str,
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        cardinality: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        if stem == "cifar":
            self.input_size, self.min_size = 32, 4
            self.stem = f.conv(in_chans, widths[0], 3)
            chs = widths[0]
        else:
            self.input_size, self.min_size = 224, 32
            chs = widths[0]
            self.stem = nn.Sequential(
                f.conv(in_chans, chs, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1)
            )
        rates = drop_path_rates(sum(layers), drop_path_rate)
        stages, idx = [], 0
        for stage, (n, planes) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(
                    block(
                        f,
                        chs,
                        planes,
                        stride,
                        rates[idx],
                        cardinality=cardinality,
                        base_width=base_width,
                    )
                )
                chs = planes * block.expansion
                idx += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = f.norm_act(chs, final=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(chs, num_classes)
        self.num_features = chs
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """Features after the final norm-act, before pooling: (N, C, h, w)."""
        self.check_input(x)
        return self.norm(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


def _scaled(widths: list[int], width_mult: float) -> list[int]:
    return [max(1, round(w * width_mult)) for w in widths]


def cifar_resnet(
    f: LayerFactory, depth: int, num_classes: int = 10, width_mult: float = 1.0, **kwargs
) -> PreActResNet:
    """CIFAR ResNet of depth 6n + 2 (three stages of n basic blocks, widths 16/32/64)."""
    n = (depth - 2) // 6
    widths = _scaled([16, 32, 64], width_mult)
    return PreActResNet(f, PreActBasicBlock, [n] * 3, widths, "cifar", num_classes, **kwargs)


def imagenet_resnet(
    f: LayerFactory,
    layers: list[int],
    num_classes: int = 1000,
    width_mult: float = 1.0,
    cardinality: int = 1,
    base_width: int = 64,
    **kwargs,
) -> PreActResNet:
    """ImageNet bottleneck ResNet/ResNeXt (v2 ordering)."""
    widths = _scaled([64, 128, 256, 512], width_mult)
    return PreActResNet(
        f,
        PreActBottleneck,
        layers,
        widths,
        "imagenet",
        num_classes,
        cardinality=cardinality,
        base_width=base_width,
        **kwargs,
    )
