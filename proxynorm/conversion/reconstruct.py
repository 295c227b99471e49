r"""Block reconstruction: after the closed-form calibration, optimize a converted model's
parameters block by block so that each block reproduces the BN model's block output on unlabeled
images, then (optionally) distill the whole model's output.

Why. The closed form (:mod:`proxynorm.conversion.calibrate`) fits each layer alone, by least
squares, and cannot undo what a GroupNorm step removed: the per-sample group statistics. What it
leaves is recovered the way post-training quantization recovers a quantized network (BRECQ, Li et
al., ICLR 2021; QDrop, Wei et al., ICLR 2022): a few hundred gradient steps per residual block,
from about a thousand unlabeled images, on the block's output error

.. math:: \min_{\theta_b} \; \frac{\| f_b(\hat x_b; \theta_b) - g_b(x_b) \|^2}{\| g_b(x_b) \|^2},

where :math:`g_b` is the BN model's block (eval mode) on its own input :math:`x_b` and
:math:`f_b` the converted block on the converted model's input :math:`\hat x_b` (the output of
the already reconstructed blocks before it), so errors of earlier blocks are compensated instead
of piling up. Blocks are the cuts of :mod:`proxynorm.conversion.blocks` (residual blocks, stem,
head); every parameter of a block's modules is optimized (convolutions, the norm's affine, PN's
proxy), with Adam and a cosine-decayed learning rate, on random mini-batches drawn from a seeded
generator. The images are streamed through both models once, block by block, keeping only the
current block's inputs: the cost is linear in depth.

A block whose error the optimization does not lower keeps its parameters as they were; so does
the whole model after distillation (mean squared error of the outputs, relative to the BN
model's). No labels are read; both models run in eval mode and are put back in their modes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, fx, nn
from tqdm.auto import tqdm

from proxynorm.conversion.blocks import BlockRunner, plan, split
from proxynorm.conversion.calibrate import input_batches
from proxynorm.conversion.fx import trace_holders

CHUNK = 64  # images per forward pass when streaming (bounds the activation memory)
ERROR_ELEMENTS = 2**22  # entries per float64 piece of an error sum (32 MiB)


@dataclass
class BlockFit:
    """One reconstructed block: relative squared error of its output against the BN model's
    (on all calibration images, the converted model's own inputs), before and after."""

    name: str
    parameters: int
    rel_error_before: float
    rel_error_after: float
    kept: bool  # False: the optimization did not lower the error, the parameters were restored


@dataclass
class ReconstructionReport:
    blocks: list[BlockFit] = field(default_factory=list)
    distill: tuple[float, float] | None = None  # output's relative error, before -> after
    images: int = 0
    steps: int = 0

    def __str__(self) -> str:
        lines = [f"reconstructed on {self.images} images, {self.steps} steps per block; relative "
                 "error of each block's output (before -> after):"]  # fmt: skip
        for b in self.blocks:
            kept = "" if b.kept else " (not lowered: restored)"
            lines.append(f"  {b.name}: {b.rel_error_before:.4f} -> {b.rel_error_after:.4f}{kept}")
        if self.distill is not None:
            lines.append(f"distilled output: {self.distill[0]:.4f} -> {self.distill[1]:.4f}")
        return "\n".join(lines)


def _leaves(v) -> list[Tensor]:
    """The tensors of a block output (a tensor, or tuples, lists, dicts of them)."""
    if isinstance(v, Tensor):
        return [v]
    if isinstance(v, dict):
        return [t for k in sorted(v) for t in _leaves(v[k])]
    if isinstance(v, list | tuple):
        return [t for x in v for t in _leaves(x)]
    raise ValueError(f"reconstruction: a block output of type {type(v).__name__} is not tensors")


def _stream(fn, x: Tensor, into: Tensor | None = None) -> list[Tensor]:
    """``fn`` (a block, a model) on ``x`` chunk by chunk, without gradients: its output's
    tensors, each written into one tensor over all images (no concatenated copy). With ``into``
    (``x`` itself, when the caller no longer needs it) a single output of ``into``'s shape is
    written over it, chunk by chunk after that chunk was read: no second copy is alive."""
    out: list[Tensor] = []
    with torch.no_grad():
        for i, chunk in enumerate(x.split(CHUNK)):
            leaves = _leaves(fn(chunk))
            if not out:
                fits = into is not None and len(leaves) == 1
                fits = fits and leaves[0].shape[1:] == into.shape[1:]
                fits = fits and leaves[0].dtype == into.dtype
                out = [into] if fits else [_empty_like(t, x.shape[0]) for t in leaves]
            for full, t in zip(out, leaves, strict=True):
                full[i * CHUNK : i * CHUNK + t.shape[0]].copy_(t)
    return out


def _stream_error(fn, x: Tensor, targets: list[Tensor]) -> float:
    """Relative squared error of ``fn``'s output on ``x`` against ``targets``, summed in float64
    piece by piece (at most :data:`ERROR_ELEMENTS` entries, or one image, at a time), keeping
    no output."""
    num = den = 0.0
    with torch.no_grad():
        for i, chunk in enumerate(x.split(CHUNK)):
            rows = slice(i * CHUNK, i * CHUNK + chunk.shape[0])
            for o, t in zip(_leaves(fn(chunk)), targets, strict=True):
                per = max(1, ERROR_ELEMENTS // max(o[0].numel(), 1))  # images per piece
                for a, b in zip(o.split(per), t[rows].split(per), strict=True):
                    a, b = a.double(), b.double()
                    num += float((a - b).pow_(2).sum())
                    den += float(b.pow(2).sum())
    return num / max(den, 1e-300)


def _empty_like(t: Tensor, n: int) -> Tensor:
    """An uninitialized ``(n, *t.shape[1:])`` tensor in ``t``'s memory format."""
    cl = t.dim() == 4 and not t.is_contiguous()
    cl = cl and t.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device, memory_format=fmt)


def _loss(out, target: list[Tensor]) -> Tensor:
    leaves = _leaves(out)
    num = sum((o.float() - t.float()).pow(2).sum() for o, t in zip(leaves, target, strict=True))
    return num / sum(t.float().pow(2).sum() for t in target).clamp_min(1e-30)


def _optimize(forward, params: list[nn.Parameter], inputs: Tensor, targets: list[Tensor],
              steps: int, batch_size: int, lr: float, gen: torch.Generator) -> None:  # fmt: skip
    """``steps`` Adam steps on random mini-batches of (inputs, targets), cosine-decayed lr."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    n = inputs.shape[0]
    for _ in range(steps):
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
        loss = _loss(forward(inputs[idx]), [t[idx] for t in targets])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    for p in params:
        p.grad = None


def _trainable(params) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad and p.is_floating_point()]


def reconstruct(
    converted: fx.GraphModule,
    original: nn.Module,
    converted_layers: list[str],
    inputs: Tensor | Iterable,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    distill_steps: int = 0,
    seed: int = 0,
) -> ReconstructionReport:
    """Reconstruct ``converted`` (in place) block by block against ``original`` on ``inputs``
    (unlabeled images: a tensor or an iterable of batches; see the module docstring).

    Args:
        converted: the converted model (``proxynorm.convert``'s output), usually calibrated.
        original: the BN model it was converted from (not changed).
        converted_layers: names of the converted layers (``ConversionReport.converted``).
        inputs: calibration images.
        steps: optimizer steps per block (0: measure the errors only).
        batch_size: images per step.
        lr: Adam's learning rate at the start (cosine-decayed to 0 over each block's steps).
        distill_steps: steps of whole-model output distillation afterwards (0: none), at lr/10.
        seed: seeds the mini-batch draws; the result is deterministic given it and the inputs.
    """
    for name, v in (("steps", steps), ("batch_size", batch_size), ("distill_steps", distill_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "batch_size" else 0):
            raise ValueError(f"reconstruct: {name} must be an int >= "
                             f"{1 if name == 'batch_size' else 0}, got {v!r}")  # fmt: skip
    if not lr > 0:
        raise ValueError(f"reconstruct: lr must be > 0, got {lr!r}")
    x = torch.cat(input_batches(inputs))
    teacher = fx.GraphModule(original, trace_holders(original, training=False))
    modes = {m: m.training for m in (*converted.modules(), *original.modules())}
    converted.eval()
    original.eval()
    try:
        report = ReconstructionReport(images=x.shape[0], steps=steps)
        gen = torch.Generator().manual_seed(seed)
        _blockwise(converted, teacher, set(converted_layers), x, report, gen,
                   steps=steps, batch_size=batch_size, lr=lr)  # fmt: skip
        if distill_steps:
            report.distill = _distill(converted, original, x, gen, distill_steps, batch_size, lr)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return report


def _blockwise(converted, teacher, layers, x, report, gen, *, steps, batch_size, lr) -> None:
    """Fit each block in turn. Alive at once, over all images: the converted model's input to
    the block and the teacher's output of it (the target, then the teacher's next input); each
    block's outputs are written over its inputs where the shapes agree (not over ``x``, which
    distillation reads)."""
    ends = plan(converted, teacher, layers)
    cb, tb = split(converted, ends), split(teacher, ends)
    rc, rt = BlockRunner(converted), BlockRunner(teacher)
    xc = xt = x
    bar = tqdm(total=steps * len(cb), desc="reconstructing", disable=None, leave=False)
    for block, tblock in zip(cb, tb, strict=True):
        own = xc is not x  # this block's inputs are ours to overwrite
        target = _stream(partial(rt.block, tblock), xt, into=xt if own else None)
        xt = None  # the teacher's input is not needed again: free it
        fit = partial(rc.block, block)
        before = _stream_error(fit, xc, target)
        params = _trainable(block.parameters(converted))
        saved = copy.deepcopy([p.detach() for p in params])
        if params and steps:
            _optimize(fit, params, xc, target, steps, batch_size, lr, gen)
        after = _stream_error(fit, xc, target)
        kept = after <= before
        if not kept:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
            after = before
        report.blocks.append(
            BlockFit(
                f"{block.start} -> {block.end}", sum(p.numel() for p in params), before, after, kept
            )
        )
        if block is not cb[-1]:
            outs = _stream(fit, xc, into=xc if own else None)
            if len(outs) != 1:
                raise ValueError(f"reconstruction: block output {block.end} is not a tensor")
            xc, xt = outs[0], target[0]
            del outs
        del target
        bar.update(steps)
    bar.close()


def _distill(converted, original, x, gen, steps, batch_size, lr) -> tuple[float, float]:
    """Whole-model distillation of ``original``'s outputs; restored when it does not help."""
    target = _stream(original, x)

    def error() -> float:
        return _stream_error(converted, x, target)

    params = _trainable(converted.parameters())
    saved = copy.deepcopy([p.detach() for p in params])
    before = error()
    _optimize(converted, params, x, target, steps, batch_size, lr / 10, gen)
    after = error()
    if after > before:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        after = before
    return before, after
