"""Proxy Normalization's activation step (Labatie et al., NeurIPS 2021, Eq. 7; docs/METHOD.md §2).

``reference`` (the formula as PyTorch ops), ``stats`` (the proxy statistics and their gradients,
with the named switch for the compiled method), ``fused`` (the autograd node, optionally with the
GroupNorm step), ``module`` (:class:`ProxyNormAct`), ``cpp`` (the opt-in C++ kernel) and
``folded`` (the inference form).
"""

from proxynorm.layers.pn.folded import FoldedProxyAct
from proxynorm.layers.pn.fused import fused_proxy_norm_act, proxy_statistics
from proxynorm.layers.pn.module import ProxyNormAct
from proxynorm.layers.pn.reference import proxy_moments, proxy_norm_act, proxy_quantiles

__all__ = [
    "FoldedProxyAct",
    "ProxyNormAct",
    "fused_proxy_norm_act",
    "proxy_moments",
    "proxy_norm_act",
    "proxy_quantiles",
    "proxy_statistics",
]
