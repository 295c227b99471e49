"""Filter Response Normalization with a Thresholded Linear Unit (FRN+TLU).

Singh & Krishnan, "Filter Response Normalization Layer", CVPR 2020; a batch-independent baseline of
Labatie et al., NeurIPS 2021 (Table 4); docs/METHOD.md §1. It replaces both the norm step and the
activation step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from proxynorm.layers.kernels import upcast
from proxynorm.layers.validation import check_input, check_num_features, check_positive


class FilterResponseNormTLU(nn.Module):
    r"""FRN + TLU norm-and-activation step.

    .. math:: \nu^2 = \mu_{H,W}(x^2),\qquad
              \mathrm{out} = \max\big(\gamma_c\, x / \sqrt{\nu^2 + \epsilon} + \beta_c,\ \tau_c\big)

    ``ν²`` is the mean square per sample and channel (no centering), computed in float32 for
    low-precision inputs. With ``apply_act=False`` the TLU is dropped (plain FRN with affine).
    On (N, C) inputs ``ν² = x²``, so FRN reduces to ``x / sqrt(x² + eps)``.

    Args:
        num_features: number of channels C.
        eps: stability constant (> 0; 1e-6 as in the FRN paper).
        apply_act: apply the TLU ``max(·, τ)``.

    Parameters: ``weight`` (γ, init 1), ``bias`` (β, init 0), ``tau`` (τ, init 0; absent
    without act).

    Shape:
        Input (N, C) or (N, C, H, W); output the same.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        apply_act: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = check_num_features(num_features)
        self.eps = check_positive("eps", eps)
        self.apply_act = bool(apply_act)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        if self.apply_act:
            self.tau = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("tau", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.tau is not None:
            nn.init.zeros_(self.tau)

    def _standardize(self, x32: Tensor) -> Tensor:
        nu2 = x32.square()
        if x32.dim() > 2:
            nu2 = nu2.mean(dim=(2, 3), keepdim=True)
        return x32 * torch.rsqrt(nu2 + self.eps)

    def standardize(self, x: Tensor) -> Tensor:
        """The normalization part ``x / sqrt(ν² + eps)`` (no affine, no TLU)."""
        return self._standardize(upcast(x)).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.num_features, type(self).__name__)
        x32 = upcast(x)
        shape = (-1,) + (1,) * (x.dim() - 2)
        out = torch.addcmul(self.bias.view(shape), self._standardize(x32), self.weight.view(shape))
        if self.tau is not None:
            out = torch.maximum(out, self.tau.view(shape).to(out.dtype))
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, apply_act={self.apply_act}"
