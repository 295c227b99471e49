"""The kernels every norm step shares: dtype and layout handling, PyTorch's native GroupNorm with
a float64 fallback, and whether the code is being compiled.

Labatie et al., NeurIPS 2021: norm statistics (and PN's proxy statistics) are computed in at
least float32 whatever the activations' dtype (docs/METHOD.md §2, "Precision"); the native
kernels want dense inputs in their own memory format.
"""

from __future__ import annotations

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32 if it is float16/bfloat16 (norm statistics stay float32), else ``x``."""
    return x.float() if x.dtype in _LOW_PRECISION else x


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype`` (no dispatch when it already is: this runs per layer and step)."""
    return t if t.dtype == dtype else t.to(dtype)


def memory_format(t: Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D tensor laid out so, else ``contiguous_format``."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dense(x: Tensor) -> Tensor:
    """``x`` upcast to at least float32 and dense in its own memory format (native kernels)."""
    return upcast(x).contiguous(memory_format=memory_format(x))


def compiling() -> bool:
    """Whether dynamo is tracing this call (``torch.compile``): some paths differ there."""
    return bool(_is_compiling())


def _resolve_is_compiling():
    found = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    if found is None:
        from torch._dynamo import is_compiling as found
    return found


_is_compiling = _resolve_is_compiling()


def cl_crash(x: Tensor) -> bool:
    """Whether PyTorch's CPU ``native_group_norm_backward`` would crash on ``x`` if not asked
    for the input's gradient: with a channels_last input and ``grad_input_mask[0]`` false it
    segfaults (torch 2.13, also through ``nn.GroupNorm``; a frozen stem or reconstructing one
    block of a channels_last model hits it). Callers then ask for that gradient and drop it."""
    return x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(
        memory_format=torch.channels_last
    ) and not x.is_contiguous()


def group_norm(x: Tensor, groups: int, w: Tensor | None, b: Tensor | None, eps: float):
    """``(out, mean, rstd)`` of PyTorch's native GroupNorm kernel on ``x`` (dense in its own
    memory format), with its affine ``w``, ``b`` (under ``torch.jit.trace``: ``(out, None,
    None)``).

    PyTorch's contiguous CPU kernel computes the variance as E[x²] − E[x]², which overflows in
    float32 for |x| ≳ 1e19 and returns NaN or zeros; there (a check on the N×G statistics, CPU only,
    outside tracing) the statistics are recomputed in float64, so the layer stays scale
    invariant like the channels_last and CUDA kernels.
    """
    if torch.jit.is_tracing():  # aten::group_norm keeps the batch size dynamic in a trace
        return torch.group_norm(x, groups, w, b, eps), None, None
    n, c = x.shape[0], x.shape[1]
    hw = x.numel() // max(n * c, 1)
    params_need_grad = any(t is not None and t.requires_grad for t in (w, b))
    crash = params_need_grad and not x.requires_grad and cl_crash(x)
    if crash and torch.is_grad_enabled() and not compiling():
        x = x.detach().requires_grad_()  # its gradient is computed and dropped (see cl_crash)
    out, mean, rstd = torch.ops.aten.native_group_norm(x, w, b, n, c, hw, groups, eps)
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not compiling()
        and rstd.numel()
        and not float(rstd.detach().amin()) > 0  # NaN, or 0 from an infinite variance
    ):
        d = [None if t is None else t.double() for t in (w, b)]
        out, mean, rstd = torch.ops.aten.native_group_norm(x.double(), *d, n, c, hw, groups, eps)
        out, mean, rstd = out.float(), mean.float(), rstd.float()
    return out, mean, rstd
