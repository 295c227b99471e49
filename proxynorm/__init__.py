"""proxynorm: Proxy Normalization (Labatie et al., NeurIPS 2021) and the norms it is compared with.

Batch-independent normalization that matches BatchNorm: GN/LN followed by a proxy-normalized
activation step. See :func:`proxynorm.layers.norm_act` and :class:`proxynorm.layers.ProxyNormAct`.

The names below are loaded on first use, so ``import proxynorm.layers`` (the part of the package
that goes inside other people's models) imports the layers alone, not conversion, analysis or
training.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "ConversionReport": "proxynorm.conversion.rewrite",
    "convert": "proxynorm.conversion.rewrite",
    "FoldReport": "proxynorm.conversion.fold",
    "fold": "proxynorm.conversion.fold",
    "Diagnosis": "proxynorm.analysis.diagnose",
    "diagnose": "proxynorm.analysis.diagnose",
    "NormSpec": "proxynorm.layers.spec",
    "parse_spec": "proxynorm.layers.spec",
    "norm_act": "proxynorm.layers.factory",
    "ProxyNormAct": "proxynorm.layers.pn.module",
    "use_cpp_kernel": "proxynorm.layers.pn.cpp",
    "create_model": "proxynorm.models.registry",
    "__version__": "proxynorm.version",
}
_ALIASES = {"__distribution__": ("proxynorm.version", "DISTRIBUTION")}
__all__ = ["__distribution__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS or name in _ALIASES:
        module, attr = _ALIASES.get(name, (_EXPORTS.get(name), name))
        value = getattr(import_module(module), attr)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'proxynorm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_ALIASES))
