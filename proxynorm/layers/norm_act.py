"""The "normalization step + activation step" container shared by BN, LN, IN and GN.

Labatie et al., NeurIPS 2021, Eqs. (3)-(4) and (7): a layer's norm step produces standardized
pre-activations ``y`` with no affine transform; the activation step owns γ and β and computes either
``φ(γ y + β)`` (:class:`AffineAct`) or the proxy-normalized ``z~`` (:class:`ProxyNormAct`).
Keeping γ, β in the activation step is what lets analysis observe ``y`` exactly (docs/METHOD.md
§3): a forward hook on ``layer.norm`` sees ``y``. Without hooks and without PN, the two steps
run fused in PyTorch's native norm kernel (same values, fewer passes over memory).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from proxynorm.layers.activation import Act, Activation, act_name, resolve_act
from proxynorm.layers.pn.module import ProxyNormAct
from proxynorm.layers.validation import check_input, check_num_features


def affine(y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Per-channel ``γ y + β`` (β optional) in ``y``'s dtype, for (N, C) or (N, C, H, W) ``y``."""
    shape = (-1,) + (1,) * (y.dim() - 2)
    w = weight.to(y.dtype).view(shape)
    if bias is None:
        return y * w
    return torch.addcmul(bias.to(y.dtype).view(shape), y, w)


class AffineAct(nn.Module):
    r"""Plain activation step :math:`z_c = \varphi(\gamma_c y_c + \beta_c)` (Eq. 4).

    Args:
        num_features: number of channels C.
        act: activation φ by name or callable; ``None`` gives the affine transform alone.
        bias: learn β; ``False`` gives a per-channel scale ``φ(γ y)`` (e.g. the final affine of
            an EfficientNet block with PN, or WS ResNets' extra scale).

    Shape:
        Input (N, C) or (N, C, H, W); output the same shape and dtype.
    """

    def __init__(
        self,
        num_features: int,
        act: Activation = "relu",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.act_name = act_name(act)
        self.act_fn = resolve_act(act)
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """γ = 1, β = 0."""
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def activate_(self, t: Tensor) -> Tensor:
        """φ applied to a freshly computed tensor, in place when φ has an in-place form that
        autograd allows."""
        fn = self.act_fn
        return fn.apply_(t) if isinstance(fn, Act) and fn.autograd_inplace else fn(t)

    def after(self, norm: NormStep, x: Tensor) -> Tensor:
        """``norm`` then this step: the affine inside the norm's native kernel, φ in place."""
        return self.activate_(norm.forward_affine(x, self.weight, self.bias))

    def forward(self, y: Tensor) -> Tensor:
        check_input(y, self.num_features, type(self).__name__)
        return self.activate_(affine(y, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{self.num_features}, act={self.act_name}, bias={self.bias is not None}"


class NormStep(nn.Module):
    """Base of the affine-free norm steps: ``forward(x)`` returns the standardized ``y``."""

    def forward_affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``γ y + β`` computed in one pass when the norm has a native fused kernel."""
        return affine(self(x), weight, bias)

    def fused_groups(self) -> int | None:
        """The GroupNorm groups when this step is exactly ``GroupNorm(groups, eps)`` (so PN can
        fuse with it), else ``None``."""
        return None


class NormAct(nn.Module):
    """One normalization step followed by one activation step.

    Subclasses choose the norm step; this class builds the activation step:

    * ``proxy=False``: :class:`AffineAct` — ``φ(γ y + β)``;
    * ``proxy=True``: :class:`ProxyNormAct` — Eq. (7), the norm step then has no affine;
    * ``apply_act=False``: exactly the plain norm with its affine ``γ y + β`` and no PN (for norms
      that feed a residual add or follow an EfficientNet projection).

    Args (shared by every subclass):
        act: activation φ (name or callable).
        apply_act: apply φ (and PN); ``False`` gives the plain norm with affine.
        bias: learn β in a plain activation step; ``False`` keeps only the per-channel scale γ
            (PN always has β, so ``bias=False`` requires ``apply_act=False`` or no PN).
        proxy: proxy-normalize the activation step (Eq. 7).
        proxy_affine, proxy_eps, n_samples, proxy_scale: see :class:`ProxyNormAct` (``affine``,
            ``eps``, ``n_samples``, ``scale`` there).

    γ and β are the activation step's ``weight``/``bias`` (also reachable as ``layer.weight`` and
    ``layer.bias``). To observe the normalized pre-activations ``y``, register a forward hook on
    ``layer.norm``; the fused fast path is skipped while one is registered.
    """

    def __init__(
        self,
        num_features: int,
        norm: NormStep,
        act: Activation = "relu",
        *,
        apply_act: bool = True,
        bias: bool = True,
        proxy: bool = False,
        proxy_affine: bool = True,
        proxy_eps: float = 0.03,
        n_samples: int = 256,
        proxy_scale: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        min_dim: int = 2,
    ) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.norm = norm
        self._min_dim = min_dim
        self.apply_act = bool(apply_act)
        self.act: nn.Module
        if proxy and apply_act:
            if not bias:
                raise ValueError(
                    "bias=False needs a plain activation step (no PN, or apply_act=False)"
                )
            self.act = ProxyNormAct(
                num_features,
                act,
                eps=proxy_eps,
                n_samples=n_samples,
                proxy_affine=proxy_affine,
                scale=proxy_scale,
                device=device,
                dtype=dtype,
            )
        else:
            self.act = AffineAct(num_features, act if apply_act else None, bias, device, dtype)

    @property
    def weight(self) -> nn.Parameter:
        """γ of the activation step."""
        return self.act.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """β of the activation step."""
        return self.act.bias

    @property
    def proxy(self) -> bool:
        """Whether the activation step is proxy-normalized."""
        return isinstance(self.act, ProxyNormAct)

    def reset_parameters(self) -> None:
        """Reset γ, β (and β~, γ~) to the paper's initialization."""
        self.act.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.num_features, type(self).__name__, self._min_dim)
        if _hooked(self.norm) or _hooked(self.act):  # hooks see y and z: the steps run apart
            return self.act(self.norm(x))
        # Every activation step implements after(norm, x): the two steps, fused where it can.
        return self.act.after(self.norm, x)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)
