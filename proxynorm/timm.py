"""timm interop: proxy-normalized norm-act layers with timm's norm-act signature.

timm builds EfficientNets, MobileNets, RegNets... from a ``norm_layer`` that
``timm.layers.get_norm_act_layer`` turns into a norm-act layer; it accepts a function that creates
one, so::

    from functools import partial
    import timm
    from proxynorm.timm import GroupNormProxyAct

    model = timm.create_model(
        "efficientnet_b0", norm_layer=partial(GroupNormProxyAct, act_layer="silu")
    )

(bind ``act_layer`` with ``partial``: timm does not pass its own to a function). Models whose
blocks apply the activation separately from ``norm_layer`` (timm's ResNets) are converted instead
with :func:`proxynorm.convert`. timm itself is optional; this module does not import it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from proxynorm.layers import GroupNormAct, LayerNormAct


def _act(act_layer: Any, act_kwargs: dict | None) -> Any:
    if act_layer is None:
        return None
    if act_kwargs and isinstance(act_layer, type):
        return act_layer(**act_kwargs)
    return act_layer


def GroupNormProxyAct(  # noqa: N802 (timm's layer-factory naming)
    num_channels: int,
    num_groups: int = 8,
    eps: float = 1e-5,
    affine: bool = True,
    group_size: int | None = None,
    apply_act: bool = True,
    act_layer: Any = nn.ReLU,
    act_kwargs: dict | None = None,
    inplace: bool = True,
    drop_layer: Any = None,
    device: Any = None,
    dtype: Any = None,
    **proxy_kwargs: Any,
) -> GroupNormAct:
    """GN(``num_groups``)+PN with timm's ``GroupNormAct`` arguments.

    ``apply_act=False`` (or ``act_layer=None``) gives exactly GroupNorm with affine, as timm's
    projection norms expect. ``inplace`` is accepted and ignored; ``affine=False`` and
    ``drop_layer`` are not supported (PN carries γ, β). Extra keyword arguments go to
    :class:`~proxynorm.layers.GroupNormAct` (``proxy_eps``, ``n_samples``...).
    """
    _check(affine, drop_layer)
    act = _act(act_layer, act_kwargs)
    return GroupNormAct(
        num_channels,
        groups=None if group_size else num_groups,
        group_size=group_size,
        act=act if act is not None else "relu",
        eps=eps,
        proxy=True,
        apply_act=apply_act and act is not None,
        device=device,
        dtype=dtype,
        **proxy_kwargs,
    )


def LayerNormProxyAct(  # noqa: N802
    num_channels: int,
    eps: float = 1e-5,
    affine: bool = True,
    apply_act: bool = True,
    act_layer: Any = nn.ReLU,
    act_kwargs: dict | None = None,
    inplace: bool = True,
    drop_layer: Any = None,
    device: Any = None,
    dtype: Any = None,
    **proxy_kwargs: Any,
) -> LayerNormAct:
    """LN+PN (GroupNorm with one group over C, H, W) with timm's norm-act arguments."""
    _check(affine, drop_layer)
    act = _act(act_layer, act_kwargs)
    return LayerNormAct(
        num_channels,
        act=act if act is not None else "relu",
        eps=eps,
        proxy=True,
        apply_act=apply_act and act is not None,
        device=device,
        dtype=dtype,
        **proxy_kwargs,
    )


def _check(affine: bool, drop_layer: Any) -> None:
    if not affine:
        raise ValueError("affine=False is not supported: PN's activation step carries gamma, beta")
    if drop_layer is not None:
        raise ValueError("drop_layer is not supported by the proxy-normalized layers")
