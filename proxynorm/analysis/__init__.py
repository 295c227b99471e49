"""Analysis of Labatie et al., NeurIPS 2021 (§3-§5): power decompositions, probes of y^l,
Theorem 1's collapse bound, channel-wise linearity, and the reports behind ``proxynorm power`` /
``proxynorm theory``."""

from proxynorm.analysis.norm_layers import norm_act_steps, norm_layers, standardized
from proxynorm.analysis.power import TERM_NAMES, PowerDecomposition, power_decomposition
from proxynorm.analysis.probes import record_layer_io, record_preactivations
from proxynorm.analysis.theory import collapse_bound, linearity_ratio, nonlinearity

__all__ = [
    "TERM_NAMES",
    "PowerDecomposition",
    "collapse_bound",
    "linearity_ratio",
    "nonlinearity",
    "norm_act_steps",
    "norm_layers",
    "power_decomposition",
    "record_layer_io",
    "record_preactivations",
    "standardized",
]
