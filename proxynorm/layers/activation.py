"""Activation functions φ of the activation step, resolved by name or taken as callables."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = str | Callable[[Tensor], Tensor] | type | None


def _identity(x: Tensor) -> Tensor:
    return x


#: Activations by name (φ); ``swish`` is SiLU, ``leaky_relu`` uses slope 0.01.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
    "identity": _identity,
    "linear": _identity,
}
# In-place twins, used only on freshly computed tensors that autograd does not need.
_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "leaky_relu": F.leaky_relu_,
    "identity": _identity,
    "linear": _identity,
}


def act_name(act: Activation) -> str:
    """A short printable name for ``act`` (as given, or the callable's name)."""
    if act is None:
        return "identity"
    if isinstance(act, str):
        return act.lower()
    if isinstance(act, nn.Module):
        return type(act).__name__
    return getattr(act, "__name__", type(act).__name__)


def resolve_act(act: Activation) -> Callable[[Tensor], Tensor]:
    """Turn ``act`` into a function ``Tensor -> Tensor``.

    Args:
        act: a name from :data:`ACTIVATIONS` (case-insensitive), ``None`` (identity), an
            ``nn.Module`` instance or subclass (instantiated with no arguments, timm's ``act_layer``
            convention), or any callable.

    Raises:
        ValueError: unknown activation name (the message lists the valid ones).
        TypeError: ``act`` is not a string, module or callable.
    """
    if act is None:
        return _identity
    if isinstance(act, str):
        fn = ACTIVATIONS.get(act.lower())
        if fn is None:
            raise ValueError(f"unknown act {act!r}; valid activations: {', '.join(ACTIVATIONS)}")
        return fn
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act()
    if callable(act):
        return act
    raise TypeError(f"act must be a name, an nn.Module or a callable, got {type(act).__name__}")


def inplace_act(act: Activation) -> Callable[[Tensor], Tensor] | None:
    """The in-place version of a named activation, or ``None`` when there is none."""
    if act is None:
        return _identity
    return _INPLACE.get(act.lower()) if isinstance(act, str) else None
