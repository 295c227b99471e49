"""Norm statistics in at least float32, whatever the activations' dtype."""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32 if it is float16/bfloat16 (norm statistics stay float32), else ``x``."""
    return x.float() if x.dtype in _LOW_PRECISION else x
