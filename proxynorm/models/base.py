"""What every model of the package shares: input checks and access to its norm-act steps."""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor, nn

from proxynorm.layers import is_norm_act


@torch.fx.wrap
def check_image_input(x: Tensor, in_chans: int, min_size: int, input_size: int, owner: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, in_chans, H, W) with H, W >= ``min_size``."""
    if x.dim() != 4 or x.shape[1] != in_chans or min(x.shape[2:]) < min_size:
        raise ValueError(
            f"{owner} expects input of shape (N, {in_chans}, H, W) with H, W >= {min_size} "
            f"(native resolution {input_size}x{input_size}), got {tuple(x.shape)}"
        )


class ProxyNormModel(nn.Module):
    """Base of the package's models.

    Attributes:
        in_chans: input channels.  input_size: native resolution.  min_size: smallest H, W.
    """

    in_chans: int = 3
    input_size: int = 224
    min_size: int = 32

    def norm_act_layers(self) -> list[nn.Module]:
        """The norm-act steps that apply an activation, in depth order: layer ``l``'s norm step
        (``.norm`` where it exists) outputs the normalized pre-activations y^l."""
        return [m for m in self.modules() if is_norm_act(m)]

    def check_input(self, x: Tensor) -> None:
        check_image_input(x, self.in_chans, self.min_size, self.input_size, type(self).__name__)
