"""The inference form of a proxy-normalized activation step (Labatie et al., NeurIPS 2021, Eq. 7).

In eval mode PN's proxy statistics are constants, so ``(φ(γ y + β) − m) · r`` is a fixed
per-channel map: ``φ(a y + b) · s + t``. For positively homogeneous φ (ReLU, LeakyReLU, identity)
``r > 0``
folds into the affine (``a = γr, b = βr``, no ``s``); ``t = −m r``. A norm step followed by this
runs as the norm's native kernel with affine ``(a, b)``, φ in place, and one shift.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from proxynorm.layers.activation import Act
from proxynorm.layers.pn.module import ProxyNormAct
from proxynorm.layers.validation import check_input


class FoldedProxyAct(nn.Module):
    r"""Fixed per-channel ``z = φ(a y + b) · s + t`` equal to a :class:`ProxyNormAct` in eval mode.

    Built with :meth:`from_proxy`; ``a, b, s, t`` are buffers (``weight``, ``bias``, ``scale`` or
    ``None``, ``shift``), so the module has no parameters and exports to ONNX/TorchScript.
    """

    def __init__(
        self,
        num_features: int,
        act_fn,
        act_name: str,
        has_scale: bool,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.act_fn, self.act_name = act_fn, act_name
        for name in ("weight", "bias", "shift"):
            self.register_buffer(name, torch.zeros(num_features, dtype=dtype))
        scale = torch.ones(num_features, dtype=dtype) if has_scale else None
        self.register_buffer("scale", scale)

    @classmethod
    @torch.no_grad()
    def from_proxy(cls, pn: ProxyNormAct) -> FoldedProxyAct:
        m, r = pn.inference_stats()  # in at least float32; float64 models stay float64
        dtype = m.dtype
        homogeneous = isinstance(pn.act_fn, Act) and pn.act_fn.homogeneous
        folded = cls(pn.num_features, pn.act_fn, pn.act_name, not homogeneous, dtype)
        w, b = pn.weight.to(dtype), pn.bias.to(dtype)
        folded.weight.copy_(w * r if homogeneous else w)
        folded.bias.copy_(b * r if homogeneous else b)
        folded.shift.copy_(-m * r)
        if not homogeneous:
            folded.scale.copy_(r)
        return folded.to(device=pn.weight.device, dtype=pn.weight.dtype)

    def _view(self, t: Tensor, like: Tensor) -> Tensor:
        return t.to(like.dtype).view((-1,) + (1,) * (like.dim() - 2))

    def finish(self, u: Tensor) -> Tensor:
        """From ``u = a y + b`` (e.g. computed by the norm's native kernel with affine)."""
        fn = self.act_fn
        z = fn.apply_(u) if isinstance(fn, Act) and fn.autograd_inplace else fn(u)
        if self.scale is None:
            return z + self._view(self.shift, z)
        return torch.addcmul(self._view(self.shift, z), z, self._view(self.scale, z))

    def after(self, norm: nn.Module, x: Tensor) -> Tensor:
        """``norm`` then this step, the affine inside the norm's native kernel."""
        return self.finish(norm.forward_affine(x, self.weight, self.bias))

    def forward(self, y: Tensor) -> Tensor:
        check_input(y, self.num_features, type(self).__name__)
        return self.finish(torch.addcmul(self._view(self.bias, y), y, self._view(self.weight, y)))

    def extra_repr(self) -> str:
        return f"{self.num_features}, act={self.act_name}, scale={self.scale is not None}"
