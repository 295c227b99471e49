"""proxynorm: Proxy Normalization (Labatie et al., NeurIPS 2021) and the norms it is compared with.

Batch-independent normalization that matches BatchNorm: GN/LN followed by a proxy-normalized
activation step. See :func:`proxynorm.layers.norm_act` and :class:`proxynorm.layers.ProxyNormAct`.
"""

from proxynorm.conversion import ConversionReport, convert
from proxynorm.diagnose import Diagnosis, diagnose
from proxynorm.folding import FoldReport, fold
from proxynorm.layers import NormSpec, ProxyNormAct, norm_act, parse_spec
from proxynorm.layers.cpp_kernel import use_cpp_kernel

__version__ = "0.2.0"
#: The distribution (``pip install torch-proxynorm``). Not the unrelated ``proxynorm`` package on
#: the public index, which also imports as ``proxynorm`` and has no ``__distribution__``.
__distribution__ = "torch-proxynorm"
__all__ = [
    "ConversionReport",
    "Diagnosis",
    "FoldReport",
    "NormSpec",
    "ProxyNormAct",
    "__distribution__",
    "__version__",
    "convert",
    "diagnose",
    "fold",
    "norm_act",
    "parse_spec",
    "use_cpp_kernel",
]
