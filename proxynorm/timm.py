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
    **kwargs: Any,
) -> GroupNormAct:
    """GN(``num_groups``)+PN with timm's ``GroupNormAct`` arguments.

    ``apply_act=False`` (or ``act_layer=None``) gives exactly GroupNorm with affine, as timm's
    projection norms expect. ``inplace`` is accepted and ignored; ``affine=False`` and
    ``drop_layer`` are not supported (PN carries γ, β). Other keyword arguments go to
    :class:`~proxynorm.layers.GroupNormAct` (``proxy_eps``, ``n_samples``, ``device``...).
    """
    groups = {"groups": None if group_size else num_groups, "group_size": group_size}
    return _build(
        GroupNormAct,
        num_channels,
        eps,
        affine,
        apply_act,
        act_layer,
        act_kwargs,
        drop_layer,
        **groups,
        **kwargs,
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
    **kwargs: Any,
) -> LayerNormAct:
    """LN+PN (GroupNorm with one group over C, H, W) with timm's norm-act arguments."""
    return _build(
        LayerNormAct,
        num_channels,
        eps,
        affine,
        apply_act,
        act_layer,
        act_kwargs,
        drop_layer,
        **kwargs,
    )


def _build(cls, num_channels, eps, affine, apply_act, act_layer, act_kwargs, drop_layer, **kw):
    if not affine:
        raise ValueError("affine=False is not supported: PN's activation step carries gamma, beta")
    if drop_layer is not None:
        raise ValueError("drop_layer is not supported by the proxy-normalized layers")
    act = act_layer(**act_kwargs) if act_kwargs and isinstance(act_layer, type) else act_layer
    return cls(
        num_channels,
        act=act if act is not None else "relu",
        eps=eps,
        proxy=True,
        apply_act=apply_act and act is not None,
        **kw,
    )
