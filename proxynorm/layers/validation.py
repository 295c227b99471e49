"""Argument and input checks shared by the layers, so every error names the offending argument."""

from __future__ import annotations

import math

import torch.fx
from torch import Tensor


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` if it is not > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_num_features(num_features: int) -> int:
    """Validate a channel count."""
    if isinstance(num_features, bool) or not isinstance(num_features, int):
        raise TypeError(f"num_features must be an int, got {type(num_features).__name__}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    return num_features


def resolve_groups(
    num_features: int,
    groups: int | None = None,
    group_size: int | None = None,
    default: int = 32,
) -> int:
    """Number of channel groups from ``groups`` or ``group_size``.

    With neither given, ``default`` is capped at ``num_features`` and, when it does not divide
    ``num_features``, reduced to their greatest common divisor (e.g. 32 groups for 112 channels
    become 16). An explicit ``groups`` or ``group_size`` must divide ``num_features`` exactly.

    Raises:
        ValueError: both given, a value < 1, or a value that does not divide ``num_features``.
    """
    if groups is not None and group_size is not None:
        raise ValueError("give groups or group_size, not both")
    for name, value in (("groups", groups), ("group_size", group_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if group_size is not None:
        if group_size < 1 or num_features % group_size:
            raise ValueError(
                f"group_size={group_size} must be >= 1 and divide num_features={num_features}"
            )
        return num_features // group_size
    if groups is not None:
        if groups < 1 or num_features % groups:
            raise ValueError(f"groups={groups} must be >= 1 and divide num_features={num_features}")
        return groups
    return math.gcd(min(default, num_features), num_features)


@torch.fx.wrap  # a single call node under symbolic tracing, instead of a trace error
def check_input(x: Tensor, num_features: int, owner: str, min_dim: int = 2) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, C) or (N, C, H, W) with C == ``num_features``."""
    if x.dim() not in (2, 4) or x.dim() < min_dim:
        shapes = "(N, C, H, W)" if min_dim > 2 else "(N, C) or (N, C, H, W)"
        raise ValueError(f"{owner} expects input of shape {shapes}, got {tuple(x.shape)}")
    if x.shape[1] != num_features:
        raise ValueError(
            f"{owner} expects {num_features} channels (dim 1), got input of shape {tuple(x.shape)}"
        )
