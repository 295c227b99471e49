"""Functional forms of proxynorm's layers (``torch.nn.functional`` style)."""

from proxynorm.layers.proxy_norm import proxy_moments, proxy_norm_act, proxy_quantiles

__all__ = ["proxy_moments", "proxy_norm_act", "proxy_quantiles"]
