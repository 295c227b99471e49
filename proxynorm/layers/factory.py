"""Factories: a norm spec string to a norm-act module, and to a (possibly WS) conv.

One dict maps each base norm to its class (timm's ``create_norm_act`` style); models resolve their
norm-act layer through :func:`norm_act` so that "BN vs GN vs GN+PN" is one argument.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from proxynorm.layers.activation import Activation
from proxynorm.layers.batch_norm import BatchNormAct2d
from proxynorm.layers.evo_norm import EvoNormS0
from proxynorm.layers.frn import FilterResponseNormTLU
from proxynorm.layers.group_norm import GroupNormAct, InstanceNormAct, LayerNormAct
from proxynorm.layers.spec import KNOWN_SPECS, NormSpec, parse_spec
from proxynorm.layers.ws_conv import WSConv2d

#: Base norm name -> norm-act class. Every class takes the channel count first.
NORM_ACT_LAYERS: dict[str, type[nn.Module]] = {
    "bn": BatchNormAct2d,
    "ln": LayerNormAct,
    "in": InstanceNormAct,
    "gn": GroupNormAct,
    "evos0": EvoNormS0,
    "frn": FilterResponseNormTLU,
}


def norm_act(
    spec: str | NormSpec,
    num_features: int,
    act: Activation = "relu",
    groups: int | None = None,
    group_size: int | None = None,
    apply_act: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build one "normalization step + activation step" module from a norm spec.

    Args:
        spec: ``bn, ln, in, gn, bn+pn, ln+pn, gn+pn, in+pn, evos0, frn`` (case-insensitive;
            ``+ws`` is accepted and only affects :func:`conv2d`).
        num_features: number of channels C.
        act: activation φ. ``evos0`` and ``frn`` bring their own (swish-like gate, TLU) and do not
            take one.
        groups: groups for ``gn``/``evos0``; ``None`` means 8 with PN and 32 without, capped at C
            (and reduced to gcd(default, C) if it does not divide C).
        group_size: channels per group, instead of ``groups``.
        apply_act: ``False`` returns exactly the plain norm with its affine and no PN.
        **kwargs: passed to the class: ``eps``, ``momentum``, ``norm_batch`` (BN),
            ``proxy_affine``, ``proxy_eps``, ``n_samples``, ``proxy_scale`` (PN), ``device``,
            ``dtype``.

    Raises:
        ValueError: unknown spec, ``groups``/``group_size`` given to a norm without groups, or any
            invalid argument of the class.

    Example::

        >>> layer = norm_act("gn+pn", 64, act="silu")
    """
    s = parse_spec(spec)
    cls = NORM_ACT_LAYERS[s.base]
    if s.applies("groups"):
        kwargs.update(groups=groups, group_size=group_size)
    elif groups is not None or group_size is not None:
        raise ValueError(f"groups/group_size apply to gn and evos0 only, not to {s.name!r}")
    if s.replaces_act:
        return cls(num_features, apply_act=apply_act, **kwargs)
    return cls(num_features, act=act, apply_act=apply_act, proxy=s.pn, **kwargs)


def is_norm_act(module: nn.Module) -> bool:
    """Whether ``module`` is a norm-act step of this package that applies an activation
    (a layer ``l`` of the paper: its input is x^l, its norm step yields y^l)."""
    return isinstance(module, tuple(NORM_ACT_LAYERS.values())) and module.apply_act


def conv2d(
    spec: str | NormSpec,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
    **kwargs: Any,
) -> nn.Conv2d:
    """A conv for a norm spec: :class:`WSConv2d` when the spec has ``+ws``, else ``nn.Conv2d``.

    ``padding=None`` pads ``dilation * (kernel_size - 1) // 2`` ("same" for odd kernels at stride
    1). ``groups`` here is the conv's group count; other kwargs (``padding_mode``, ``device``,
    ``dtype``; ``eps`` for WS) go to the class.
    """
    cls = WSConv2d if parse_spec(spec).ws else nn.Conv2d
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    return cls(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        **kwargs,
    )


def spec_table() -> str:
    """``proxynorm specs``: a Markdown table of the known specs, their class and whether they
    depend on the batch."""
    rows = [f"| {name} | {NORM_ACT_LAYERS[s.base].__name__} | {s.batch_dependent} |"
            for name, s in ((n, parse_spec(n)) for n in KNOWN_SPECS)]  # fmt: skip
    note = "Add +ws to any spec for weight-standardized convs (e.g. gn+pn+ws)."
    return "\n".join(["| spec | class | batch dependent |", "|---|---|---|", *rows, "", note])
