"""Record what each norm-act step sees: y^l (the norm step's output) and z^l (the step's output).

Works on the package's models (``model.norm_act_layers()``) and on plain PyTorch models with
``nn.BatchNorm2d`` / ``nn.GroupNorm`` layers, for which y is recomputed from the layer's input
without the affine transform (docs/METHOD.md §3: y is probed *before* γ, β).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proxynorm.layers import EvoNormS0, FilterResponseNormTLU, NormAct


def norm_act_steps(model: nn.Module) -> list[nn.Module]:
    """The norm steps of ``model`` in depth order: its ``norm_act_layers()`` when it has them,
    else every ``nn.BatchNorm2d``/``nn.GroupNorm`` in registration order."""
    if hasattr(model, "norm_act_layers"):
        return list(model.norm_act_layers())
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]


def _standardized(module: nn.Module, x: Tensor) -> Tensor:
    """y for modules whose forward does not expose it (affine removed, statistics as in forward)."""
    if isinstance(module, nn.GroupNorm):
        return F.group_norm(x, module.num_groups, None, None, module.eps)
    if isinstance(module, nn.BatchNorm2d):
        use_batch = module.training or module.running_mean is None
        return F.batch_norm(
            x,
            module.running_mean,
            module.running_var,
            None,
            None,
            training=use_batch,
            momentum=0.0,
            eps=module.eps,
        )
    if isinstance(module, (EvoNormS0, FilterResponseNormTLU)):
        return module.standardize(x)
    raise TypeError(f"cannot probe {type(module).__name__}")


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
            pending[i] = _standardized(m, args[0]).detach()

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
