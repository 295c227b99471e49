"""Deployment: fold PN for inference, then export to ONNX or TorchScript.

``onnx``, ``onnxscript`` (and ``onnxruntime`` to check the result) are optional:
``pip install -e ".[export]"`` (this project is distributed as ``torch-proxynorm``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from proxynorm.conversion.fold import fold

FORMATS = ("onnx", "torchscript")


def export_model(
    model: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    format: str = "onnx",
    fold_pn: bool = True,
) -> Path:
    """Write ``model`` (eval mode, PN folded unless ``fold_pn=False``) to ``path``.

    Args:
        model: the model (not modified).
        path: output file (``.onnx`` or ``.pt``).
        example: an example input batch (its shape is the exported input shape; the batch
            dimension is dynamic in ONNX).
        format: ``onnx`` or ``torchscript`` (traced).

    Raises:
        ValueError: unknown format. ImportError: ``onnx`` / ``onnxscript`` are not installed
            (the message says which extra to install).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deployed = fold(model)[0] if fold_pn else model.eval()
    with torch.no_grad():
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings from the input checks
                traced = torch.jit.trace(deployed, example)
            traced.save(str(path))
        else:
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
            except ImportError as err:
                raise ImportError(
                    f'ONNX export needs {err.name}: pip install -e ".[export]" (onnx, '
                    "onnxruntime, onnxscript)"
                ) from None

            torch.onnx.export(
                deployed,
                (example,),
                str(path),
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
    return path
