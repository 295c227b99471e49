"""Record what each norm-act step sees: y^l (the norm step's output) and z^l (the step's output).

Works on the package's models and on plain PyTorch models, on the layers of
:func:`proxynorm.analysis.norm_layers.norm_act_steps`; where a layer does not expose y it is
recomputed from the layer's input without the affine transform (docs/METHOD.md §3: y is probed
*before* γ, β).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from proxynorm.analysis.norm_layers import norm_act_steps, standardized
from proxynorm.layers import NormAct


def record_layer_io(
    model: nn.Module,
    inputs: Tensor,
    reduce: Callable[[Tensor, Tensor], Any],
    layers: list[nn.Module] | None = None,
) -> list[Any]:
    """Run ``model(inputs)`` once and return ``reduce(y^l, z^l)`` for every norm-act step.

    ``y^l`` is the normalized pre-activation and ``z^l`` the step's output (the post-activation).
    Runs without gradients in the model's current mode (train mode for batch statistics); all hooks
    are removed afterwards, even on error. ``reduce`` runs inside the hook, so large activations
    need not be kept.
    """
    layers = norm_act_steps(model) if layers is None else layers
    results: list[Any] = [None] * len(layers)
    pending: dict[int, Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):

        def on_norm_output(m, args, out, i=i):  # y is the norm step's output
            pending[i] = out.detach()

        def on_input(m, args, i=i):  # y recomputed from the step's input
            pending[i] = standardized(m, args[0]).detach()

        def on_output(m, args, out, i=i):
            results[i] = reduce(pending.pop(i), out.detach())

        if isinstance(layer, NormAct):
            handles.append(layer.norm.register_forward_hook(on_norm_output))
        else:
            handles.append(layer.register_forward_pre_hook(on_input))
        handles.append(layer.register_forward_hook(on_output))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return results


def record_preactivations(
    model: nn.Module,
    inputs: Tensor,
    reduce: Callable[[Tensor], Any] | None = None,
    layers: list[nn.Module] | None = None,
) -> list[Any]:
    """The normalized pre-activations y^l of every norm-act step, in depth order.

    Args:
        model: a proxynorm model, or any model with ``nn.BatchNorm2d``/``nn.GroupNorm`` layers.
        inputs: one batch.
        reduce: applied to each y^l inside the hook (e.g. :func:`power_decomposition`);
            ``None`` keeps detached copies of the tensors.
        layers: the steps to probe (default: :func:`norm_act_steps`).

    Returns:
        One entry per norm-act step; no gradients are kept and hooks are removed.
    """
    keep = reduce or (lambda y: y.clone())
    return record_layer_io(model, inputs, lambda y, z: keep(y), layers)
