"""Optional C++ kernel for the GN+PN step with ReLU or identity on CPU (built on first use).

Labatie et al., NeurIPS 2021, Eq. (7). In eager mode a GN+PN layer costs a fixed ~0.2–0.4 ms per
training step more than GN+ReLU on CPU, whatever the batch (docs/PERFORMANCE.md): the autograd
Function's Python work and ~40 small operators on the (C,)- and (C, n)-sized proxy statistics. At
the small per-device batches PN is for, that is most of the difference. This kernel does the
same computation as :class:`~proxynorm.layers.pn.fused._ProxyNormActFunction` (values and
gradients checked against it in float64 and with ``gradcheck``), with the proxy statistics and
their gradients in closed form (prefix sums over the sorted quantiles, double precision) and the
backward pass in C++ (the method is in the source's header and docs/PERFORMANCE.md).

It is **opt in**, because building it needs a C++ compiler and takes ~40 s the first
time (cached afterwards by ``torch.utils.cpp_extension`` under ``~/.cache/torch_extensions``):
``PROXYNORM_CPP=1`` in the environment, or :func:`use_cpp_kernel` in code. Where it cannot be
built, a warning says why and every layer keeps the Python path. It is used only where it computes
exactly what the Python path does: CPU, float32/float64 input and parameters of the same dtype,
ReLU or identity, a GroupNorm step (GN, LN, IN) before PN, training or gradients, no autocast,
not under ``torch.compile`` or ``torch.jit.trace`` (they take the Python path, which compiles to
fused kernels anyway). Its proxy statistics are computed in double precision, so in float32 it
agrees with the Python path to rounding (float64: to 1e-10, tested).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("csrc") / "gn_pn.cpp"
_state: dict = {"wanted": os.environ.get("PROXYNORM_CPP", "") == "1", "module": None, "error": None}


def use_cpp_kernel(enabled: bool = True) -> bool:
    """Turn the C++ kernel on (building it now if needed) or off; returns whether it is in use.

    Raises nothing: if the build fails, a warning gives the reason and the Python path stays.
    """
    _state["wanted"] = bool(enabled)
    return in_use()


def in_use() -> bool:
    """Whether the kernel is switched on and built (building it if it is on and not built yet);
    it then runs wherever it applies."""
    return bool(_state["wanted"]) and _module() is not None


def cpp_kernel_error() -> str | None:
    """Why the kernel could not be built (``None`` if it was, or was never tried)."""
    return _state["error"]


def _module() -> ModuleType | None:
    if _state["module"] is None and _state["error"] is None:
        try:
            from torch.utils.cpp_extension import load

            # OpenMP as PyTorch's own kernels (at::parallel_for runs serially without it); the
            # process keeps PyTorch's OpenMP runtime (libgomp.so.1 is already loaded).
            omp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
            _state["module"] = load(
                name="proxynorm_gn_pn",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", *omp],
                extra_ldflags=omp,
                verbose=False,
            )
        except Exception as err:  # noqa: BLE001 -- any build failure: keep the Python path
            _state["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1]}"
            warnings.warn(
                f"proxynorm: the C++ GN+PN kernel could not be built ({_state['error']}); "
                "using the Python path",
                RuntimeWarning,
                stacklevel=3,
            )
    return _state["module"]


_FLOATS = (torch.float32, torch.float64)


def applies(x: Tensor, params: tuple, act_name: str, groups: int | None) -> bool:
    """Whether the kernel is wanted and computes exactly this call (see the module docstring)."""
    if not _state["wanted"] or groups is None or act_name not in ("relu", "identity"):
        return False
    if x.device.type != "cpu" or x.dtype not in _FLOATS or x.dim() < 2 or x.numel() == 0:
        return False
    if any(p is not None and (p.dtype != x.dtype or p.device != x.device) for p in params):
        return False
    return _module() is not None


def group_norm_proxy_act(x, weight, bias, proxy_weight, proxy_bias, quantiles, act_name,
                         proxy_eps, scale, groups, eps) -> Tensor:  # fmt: skip
    """The kernel's forward (an autograd node whose backward runs in C++)."""
    return _module().group_norm_proxy_act(
        x, weight, bias, proxy_weight, proxy_bias, quantiles, act_name == "relu",
        float(proxy_eps), bool(scale), int(groups), float(eps),
    )  # fmt: skip
