"""Benchmarks behind ``proxynorm bench``: time and saved-for-backward memory of norm-act layers and
of whole training steps, as ratios against BN+ReLU measured in the same process.

Every variant is timed in interleaved rounds (one call of each per round, after warm-up), and the
median over rounds is reported, so slow drifts of the machine hit all variants alike. Saved memory
is counted with :func:`torch.autograd.graph.saved_tensors_hooks`, each storage once (a tensor saved
by two nodes, like a ReLU output that the next convolution also saves, counts once).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from proxynorm.environment import environment
from proxynorm.layers import ProxyNormAct, norm_act
from proxynorm.models import create_model


def set_fused(module: nn.Module, fused: bool) -> nn.Module:
    """Switch every :class:`ProxyNormAct` in ``module`` to the fused or the reference path."""
    for m in module.modules():
        if isinstance(m, ProxyNormAct):
            m.fused = fused
    return module


def saved_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs forward
    (parameters included; each storage counted once)."""
    seen: dict[tuple[int, str], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


@dataclass
class Variant:
    """One thing to time: ``step()`` runs forward + backward once."""

    name: str
    step: Callable[[], Any]
    forward: Callable[[], Tensor]


def _time_rounds(variants: list[Variant], repeats: int, warmup: int, desc: str) -> dict:
    for v in variants:
        for _ in range(warmup):
            v.step()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in tqdm(range(repeats), desc=desc, leave=False, disable=None):
        for v in variants:
            t0 = time.perf_counter()
            v.step()
            times[v.name].append(time.perf_counter() - t0)
    return times


def _summarize(variants: list[Variant], times: dict, baseline: str) -> dict[str, dict]:
    """Median time per variant, and the median over rounds of its time / the baseline's time in
    the same round (robust to the machine slowing down or speeding up between rounds)."""
    rows = {}
    for v in variants:
        ratios = [t / b for t, b in zip(times[v.name], times[baseline], strict=True)]
        rows[v.name] = {
            "ms": statistics.median(times[v.name]) * 1e3,
            "ratio": statistics.median(ratios),
            "saved_mib": saved_bytes(v.forward) / 2**20,
            "runs": len(times[v.name]),
        }
    return rows


LAYERS = {
    "BN+ReLU": ("bn", {}),
    "GN+ReLU": ("gn", {}),
    "GN+PN (reference)": ("gn+pn", {"fused": False}),
    "GN+PN (fused)": ("gn+pn", {"fused": True}),
    "LN+PN (fused)": ("ln+pn", {"fused": True}),
    "EvoNorm-S0": ("evos0", {}),
    "FRN+TLU": ("frn", {}),
}


def _layer_variant(name: str, layer: nn.Module, x: Tensor) -> Variant:
    def forward() -> Tensor:
        return layer(x)

    def step() -> None:
        layer(x).sum().backward()
        x.grad = None

    return Variant(name, step, forward)


def bench_layers(
    shape: tuple[int, int, int, int] = (128, 64, 16, 16),
    groups: int = 8,
    channels_last: bool = False,
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, dict]:
    """Forward + backward of one norm-act layer per spec (and PN's activation step alone against
    an affine + ReLU of the same tensor) on a float32 input of ``shape``."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
    c = shape[1]
    variants = []
    for name, (spec, opts) in LAYERS.items():
        kw = {"groups": groups} if spec in ("gn", "gn+pn", "evos0") else {}
        layer = norm_act(spec, c, **kw)
        if "fused" in opts:
            set_fused(layer, opts["fused"])
        variants.append(_layer_variant(name, layer, x))
    # The activation step alone, on an already normalized y.
    affine_relu = norm_act("gn", c, groups=groups).act
    pn = ProxyNormAct(c)
    pn_ref = ProxyNormAct(c, fused=False)
    variants += [
        _layer_variant("act: affine+ReLU", affine_relu, x),
        _layer_variant("act: PN (reference)", pn_ref, x),
        _layer_variant("act: PN (fused)", pn, x),
    ]
    times = _time_rounds(variants, repeats, warmup, f"layers {'x'.join(map(str, shape))}")
    rows = _summarize(variants[:-3], times, "BN+ReLU")
    rows.update(_summarize(variants[-3:], times, "act: affine+ReLU"))
    return rows


MODEL_VARIANTS = {
    "bn": ("bn", True),
    "gn": ("gn", True),
    "gn+pn (reference)": ("gn+pn", False),
    "gn+pn (fused)": ("gn+pn", True),
}


def _model_variant(name: str, model: nn.Module, x: Tensor, y: Tensor, compiled: bool) -> Variant:
    run = torch.compile(model) if compiled else model

    def forward() -> Tensor:
        return F.cross_entropy(run(x), y)

    def step() -> None:
        F.cross_entropy(run(x), y).backward()
        for p in model.parameters():
            p.grad = None

    return Variant(name, step, forward)


def bench_models(
    model: str = "resnet20",
    batch: int = 128,
    size: int = 32,
    groups: int = 8,
    channels_last: bool = False,
    compiled: bool = False,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, dict]:
    """One training step (forward, loss, backward; no optimizer) of ``model`` per norm."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    num_classes = 10 if size <= 64 else 1000
    y = torch.randint(0, num_classes, (batch,))
    variants = []
    for name, (spec, fused) in MODEL_VARIANTS.items():
        kw = {"groups": groups} if spec.startswith("gn") else {}
        m = create_model(model, norm=spec, num_classes=num_classes, **kw).train()
        set_fused(m.to(memory_format=fmt), fused)
        variants.append(_model_variant(name, m, x, y, compiled))
    desc = f"{model} batch {batch} {'channels_last' if channels_last else 'contiguous'}"
    times = _time_rounds(variants, repeats, warmup, desc + (" compiled" if compiled else ""))
    return _summarize(variants, times, "bn")


def run_benchmarks(
    out: str | Path,
    models: list[str],
    repeats: int = 10,
    compiled: list[str] | None = None,
    layer_shape: tuple[int, int, int, int] = (128, 64, 16, 16),
) -> dict[str, Any]:
    """All tables: layers and models, contiguous and channels_last, plus ``torch.compile``'d
    models for those in ``compiled``; writes ``bench.json`` and ``bench.md`` under ``out``."""
    compiled = compiled or []
    settings = {
        "resnet20": {"model": "resnet20", "batch": 128, "size": 32},
        # The small per-device batch PN is for: PN's per-step cost (proxy statistics of C x n
        # values per layer) does not shrink with the batch, so its share grows.
        "resnet20-b8": {"model": "resnet20", "batch": 8, "size": 32},
        "resnet50": {"model": "resnet50", "batch": 16, "size": 128},
    }
    results: dict[str, Any] = {"environment": environment(), "tables": []}
    for cl in (False, True):
        fmt = "channels_last" if cl else "contiguous"
        rows = bench_layers(layer_shape, channels_last=cl, repeats=max(repeats, 10) * 2)
        results["tables"].append(
            {"kind": "layer", "what": f"{'x'.join(map(str, layer_shape))} {fmt}", "rows": rows}
        )
        for model in models:
            if model not in settings or not set(compiled) <= set(models):
                raise ValueError(
                    f"unknown benchmark model in {models} / compiled {compiled}; "
                    f"valid: {sorted(settings)} (compiled ones must be benchmarked too)"
                )
            s = settings[model]
            for comp in (False, True) if model in compiled else (False,):
                rows = bench_models(
                    s["model"],
                    s["batch"],
                    s["size"],
                    channels_last=cl,
                    compiled=comp,
                    repeats=repeats,
                )
                what = f"{s['model']} batch {s['batch']} {s['size']}x{s['size']} {fmt}"
                results["tables"].append(
                    {"kind": "model", "what": what + (" compiled" if comp else ""), "rows": rows}
                )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    (out / "bench.md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# proxynorm bench",
        "",
        f"proxynorm {env.get('proxynorm', '?')} (commit {env.get('commit') or 'unknown'}), "
        f"torch {env['torch']}, {env['threads']} threads, {env['processor']}. Median of "
        "interleaved runs after warm-up; ratio against the first row of each table "
        "(layers: BN+ReLU, activation steps: affine+ReLU, models: bn), as the median over "
        "rounds of the within-round ratio.",
        "",
    ]
    for table in results["tables"]:
        lines += [
            f"## {table['kind']}: {table['what']}",
            "",
            "| variant | ms | ratio | saved for backward (MiB) |",
            "|---|---|---|---|",
        ]
        for name, r in table["rows"].items():
            lines.append(f"| {name} | {r['ms']:.1f} | {r['ratio']:.2f} | {r['saved_mib']:.1f} |")
        lines.append("")
    return "\n".join(lines)
