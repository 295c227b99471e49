"""Existing BatchNorm models made batch independent (Labatie et al., NeurIPS 2021, §5: "replace BN
steps with GN/LN steps and activation steps with proxy-normalized activation steps").

``rewrite`` (:func:`convert`: the torch.fx rewrite), ``fx`` (tracing where a model holds BN, the
activation a node applies), ``calibrate`` (fitting the converted layers to the BN model's
activations on unlabeled data), ``reconstruct`` (then optimizing them block by block against the
BN model's block outputs, and distilling), ``blocks`` (a traced model cut into blocks run one
after the other: the streaming that keeps the cost linear in depth), ``fold`` (PN to fixed
per-channel maps for inference), ``export`` (ONNX / TorchScript of a folded model) and ``source``
(rebuilding a saved converted model).
"""

from proxynorm.conversion.calibrate import CalibrationReport, calibrate
from proxynorm.conversion.fold import FoldReport, fold, passes_shift
from proxynorm.conversion.fx import activation_of, bn_holders, is_bn_like, trace_holders
from proxynorm.conversion.reconstruct import ReconstructionReport, reconstruct
from proxynorm.conversion.rewrite import ConversionReport, TrainingFlag, convert, nearest_divisor
from proxynorm.conversion.source import build_source, rebuild

__all__ = [
    "CalibrationReport",
    "ConversionReport",
    "FoldReport",
    "ReconstructionReport",
    "TrainingFlag",
    "activation_of",
    "bn_holders",
    "build_source",
    "calibrate",
    "convert",
    "fold",
    "is_bn_like",
    "nearest_divisor",
    "passes_shift",
    "rebuild",
    "reconstruct",
    "trace_holders",
]
