"""Functional forms of proxynorm's layers (``torch.nn.functional`` style).

``proxy_norm_act`` is the reference composition of PyTorch ops; ``fused_proxy_norm_act`` is the
one-node autograd.Function (optionally with the GroupNorm step) that ``ProxyNormAct`` runs.
"""

from proxynorm.layers.pn.fused import fused_proxy_norm_act, proxy_statistics
from proxynorm.layers.pn.reference import proxy_moments, proxy_norm_act, proxy_quantiles

__all__ = [
    "fused_proxy_norm_act",
    "proxy_moments",
    "proxy_norm_act",
    "proxy_quantiles",
    "proxy_statistics",
]
