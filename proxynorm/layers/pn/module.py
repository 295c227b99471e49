"""The proxy-normalized activation step as a layer: :class:`ProxyNormAct` (Labatie et al., NeurIPS
2021, Eq. 7; docs/METHOD.md §2). The formula is in :mod:`.reference`, the fused autograd node in
:mod:`.fused`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from proxynorm.layers import kernels
from proxynorm.layers.activation import Act, Activation, act_name, resolve_act
from proxynorm.layers.pn.fused import fused_proxy_norm_act, proxy_statistics
from proxynorm.layers.pn.reference import proxy_moments, proxy_norm_act, shared_quantiles
from proxynorm.layers.validation import check_input, check_num_features, check_positive


class ProxyNormAct(nn.Module):
    r"""Proxy-normalized activation step (Labatie et al. 2021, Eq. 7).

    .. math::
        \tilde z_c = \frac{\varphi(\gamma_c y_c + \beta_c)
                           - E[\varphi(\gamma_c \tilde Y_c + \beta_c)]}
                          {\sqrt{\mathrm{Var}[\varphi(\gamma_c \tilde Y_c + \beta_c)] + \epsilon}},
        \qquad \tilde Y_c \sim N(\tilde\beta_c, (1 + \tilde\gamma_c)^2)

    The proxy mean and *population* variance are taken over ``n_samples`` standard-normal quantiles
    (see :func:`proxy_quantiles`), in at least float32 whatever the input dtype. They depend only
    on parameters, so the layer is batch independent. It must directly follow a norm step (so that
    ``y`` is at unit scale), as in LN+PN or GN+PN; see :func:`proxynorm.layers.norm_act`.

    Args:
        num_features: number of channels C.
        act: activation φ: a name (``"relu"``, ``"relu6"``, ``"leaky_relu"``, ``"silu"``,
            ``"gelu"``, ``"hardswish"``, ``"mish"``...), a function (``F.relu6``), an
            ``nn.Module`` class or instance; all resolve to one canonical activation
            (:func:`~proxynorm.layers.activation.get_act`). Any other callable runs the
            reference path.
        eps: stability constant added to the proxy variance (0.03 in the paper; must be > 0).
        n_samples: number of proxy quantiles (256 in the paper's Appendix B; must be >= 2).
        proxy_affine: learn β~ (``proxy_bias``) and γ~ (``proxy_weight``), both initialised to 0;
            otherwise Y~ ~ N(0, 1).
        scale: divide by the proxy std. ``False`` subtracts the proxy mean only (the paper's
            setting for the step just before final global pooling).
        fused: run the input-sized work in one ``autograd.Function`` that saves only its input
            and recomputes the rest in backward (:mod:`proxynorm.layers.pn.fused`), for
            every activation of the registry; ``False`` (or a callable the registry does not
            know) runs the reference composition of PyTorch ops. Both give the same values and
            gradients.

    In eval mode without gradients, the proxy statistics are computed once and reused while the
    values of γ, β, β~, γ~ (and φ, eps, ``scale``) are unchanged, however they are edited.

    Attributes:
        weight: γ, shape (C,), init 1.  bias: β, shape (C,), init 0.
        proxy_weight: γ~ (proxy std is 1 + γ~), init 0.  proxy_bias: β~, init 0.
        quantiles: non-persistent float64 buffer of the ``n_samples`` quantiles, one tensor shared
            by the PN layers with the same ``n_samples`` on a device (a constant: replace it,
            ``layer.quantiles = q``, rather than edit it in place).

    Shape:
        Input (N, C) or (N, C, H, W); output the same shape and dtype.

    Example::

        >>> pn = ProxyNormAct(64, act="silu")
        >>> out = pn(torch.nn.functional.group_norm(torch.randn(8, 64, 16, 16), 8))
    """

    def __init__(
        self,
        num_features: int,
        act: Activation = "relu",
        eps: float = 0.03,
        n_samples: int = 256,
        proxy_affine: bool = True,
        scale: bool = True,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fused = bool(fused)
        self._stats_cache: tuple | None = None
        self.num_features = check_num_features(num_features)
        self.eps = check_positive("eps", eps)
        self.n_samples = n_samples
        self.proxy_affine = bool(proxy_affine)
        self.scale = bool(scale)
        self.act_name = act_name(act)
        self.act_fn = resolve_act(act)
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        if self.proxy_affine:
            self.proxy_weight = nn.Parameter(torch.empty(num_features, **factory))
            self.proxy_bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("proxy_weight", None)
            self.register_parameter("proxy_bias", None)
        self.register_buffer(
            "quantiles", shared_quantiles(n_samples, device=device), persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """γ = 1, β = 0, γ~ = 0, β~ = 0 (the paper's initialization)."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.proxy_affine:
            nn.init.zeros_(self.proxy_weight)
            nn.init.zeros_(self.proxy_bias)

    def _apply(self, fn, *args, **kwargs):
        # ``.half()`` / ``.to(dtype)`` would round the quantiles; keep them exact in float64.
        super()._apply(fn, *args, **kwargs)
        self.quantiles = shared_quantiles(self.n_samples, device=self.quantiles.device)
        return self

    def proxy_moments(self) -> tuple[Tensor, Tensor]:
        """Current per-channel proxy ``(mean, var)`` (each of shape (C,))."""
        return proxy_moments(
            self.weight, self.bias, self.proxy_weight, self.proxy_bias, self.act_fn, self.quantiles
        )

    @property
    def uses_fused(self) -> bool:
        """Whether forward runs the fused Function (``fused`` and a φ of the registry)."""
        return self.fused and isinstance(self.act_fn, Act)

    def train(self, mode: bool = True) -> ProxyNormAct:
        self._stats_cache = None
        return super().train(mode)

    def pn_args(self) -> tuple:
        """``(γ, β, γ~, β~, quantiles, act, eps, scale)``: the arguments of
        :func:`~proxynorm.layers.pn.fused.fused_proxy_norm_act` and ``proxy_statistics``."""
        return (
            self.weight,
            self.bias,
            self.proxy_weight,
            self.proxy_bias,
            self.quantiles,
            self.act_fn,
            self.eps,
            self.scale,
        )

    def _cached_stats(self) -> tuple[Tensor, Tensor] | None:
        """``(m, r)`` for inference (eval mode, no gradient needed, not tracing or compiling),
        reused while everything they are computed from is unchanged; ``None`` otherwise.

        The cache is keyed on the *values* of γ, β, γ~, β~ (one comparison of 4C numbers, which
        any edit changes: ``.data``, ``copy_`` under ``no_grad``, ``load_state_dict``, optimizer
        steps, ``.to(dtype)``), plus the quantiles, φ, eps and ``scale``: correct by
        construction, where version counters miss ``.data`` edits.
        """
        if self.training or kernels.compiling() or torch.jit.is_tracing():
            return None
        params = [self.weight, self.bias, self.proxy_weight, self.proxy_bias]
        params = [p for p in params if p is not None]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return None
        with torch.no_grad():
            values = torch.cat([p.detach().reshape(-1) for p in params])
        key = (self.act_fn, self.eps, self.scale, self.quantiles.data_ptr(), self.n_samples)
        cached = self._stats_cache
        if (
            cached is None
            or cached[0] != key
            or cached[1].dtype != values.dtype
            or cached[1].device != values.device
            or not torch.equal(cached[1], values)
        ):
            self._stats_cache = cached = (key, values, self.inference_stats())
        return cached[2]

    @torch.no_grad()
    def inference_stats(self) -> tuple[Tensor, Tensor]:
        """The proxy mean ``m`` and inverse scale ``r = 1/sqrt(Var + eps)`` (ones without
        ``scale``) of the current parameters, shape ``(C,)``, in at least float32: the
        constants of this step in eval mode, ``z~ = (φ(γ y + β) − m) · r``."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        if isinstance(self.act_fn, Act):
            return proxy_statistics(*self.pn_args(), dtype)
        m, v = self.proxy_moments()
        return m, torch.rsqrt(v + self.eps) if self.scale else torch.ones_like(v)

    def _fused(self, x: Tensor, groups: int | None = None, eps: float = 1e-5) -> Tensor:
        stats = None
        if torch.jit.is_tracing() and not self.training:
            # (m, r) as traced ops: the Function would be an opaque node, and whether it is taken
            # would depend on requires_grad, which trace's own check run turns off.
            stats = self.inference_stats()
        elif not (torch.is_grad_enabled() and x.requires_grad):
            stats = self._cached_stats()  # inference: (m, r) from the cache
        return fused_proxy_norm_act(x, *self.pn_args(), groups, eps, stats=stats)

    def after(self, norm: nn.Module, x: Tensor) -> Tensor:
        """``norm`` then this step. A GroupNorm step (GN, LN, IN) and the fused path run as one
        autograd node that saves only ``x``, per-group statistics and its output."""
        groups = norm.fused_groups()
        if groups is not None and self.uses_fused:
            return self._fused(x, groups, norm.eps)
        return self(norm(x))

    def forward(self, y: Tensor) -> Tensor:
        check_input(y, self.num_features, type(self).__name__)
        if self.uses_fused:
            return self._fused(y)
        return proxy_norm_act(
            y,
            self.weight,
            self.bias,
            self.proxy_weight,
            self.proxy_bias,
            act=self.act_fn,
            eps=self.eps,
            scale=self.scale,
            quantiles=self.quantiles,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, act={self.act_name}, eps={self.eps}, "
            f"n_samples={self.n_samples}, proxy_affine={self.proxy_affine}, scale={self.scale}, "
            f"fused={self.uses_fused}"
        )
