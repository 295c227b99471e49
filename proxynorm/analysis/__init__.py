"""Analysis of Labatie et al., NeurIPS 2021 (§3-§5): power decompositions, probes of y^l,
Theorem 1's collapse bound, channel-wise linearity, and the reports behind ``proxynorm power`` /
``proxynorm theory``."""

from proxynorm.analysis.power import TERM_NAMES, PowerDecomposition, power_decomposition
from proxynorm.analysis.probes import norm_act_steps, record_layer_io, record_preactivations
from proxynorm.analysis.theory import collapse_bound, linearity_ratio

__all__ = [
    "TERM_NAMES",
    "PowerDecomposition",
    "collapse_bound",
    "linearity_ratio",
    "norm_act_steps",
    "power_decomposition",
    "record_layer_io",
    "record_preactivations",
]
