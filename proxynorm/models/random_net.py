"""Random nets of Labatie et al., NeurIPS 2021, Definition 1 (docs/METHOD.md §4).

Every layer is conv (circular padding, truncated-normal weights scaled by 1/sqrt(fan_in)) ->
norm step -> activation step, with γ ~ N(1, gamma_std²) and β ~ N(0, beta_std²) drawn i.i.d. per
channel, and PN's β~ = γ~ = 0. The forward returns the last layer's post-activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from proxynorm.models.base import ProxyNormModel
from proxynorm.models.builder import LayerFactory, init_weights


class RandomNet(ProxyNormModel):
    """A random net of Definition 1.

    Args:
        f: the :class:`LayerFactory` (norm spec and activation φ).
        depth: number of layers L.
        width: channels C of every layer.
        kernel_size: conv kernel size.
        gamma_std, beta_std: std of γ around 1 and of β around 0.
        first_stride: stride of the first conv (2 in the paper's Fig. 2).
        seed: seeds every random parameter (same seed -> same net).
        in_chans: input channels.
    """

    def __init__(
        self,
        f: LayerFactory,
        depth: int,
        width: int,
        kernel_size: int = 3,
        gamma_std: float = 0.2,
        beta_std: float = 0.2,
        first_stride: int = 1,
        seed: int = 0,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        self.in_chans, self.input_size, self.min_size = in_chans, 32, 1
        layers: list[nn.Module] = []
        chs = in_chans
        for i in range(depth):
            stride = first_stride if i == 0 else 1
            layers += [
                f.conv(chs, width, kernel_size, stride, padding_mode="circular"),
                f.norm_act(width),
            ]
            chs = width
        self.layers = nn.Sequential(*layers)
        gen = torch.Generator().manual_seed(seed)
        init_weights(self, gen)
        with torch.no_grad():
            for layer in self.norm_act_layers():
                layer.weight.normal_(1.0, gamma_std, generator=gen)
                layer.bias.normal_(0.0, beta_std, generator=gen)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.layers(x)
