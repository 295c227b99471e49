"""The benchmarks behind ``proxynorm bench``: time and saved-for-backward memory of norm-act
layers and of whole training steps, as ratios against BN+ReLU measured in the same process.

Every variant is timed in interleaved rounds (one call of each per round, after warm-up), and the
median over rounds is reported, so slow drifts of the machine hit all variants alike. Saved memory
is counted with :func:`torch.autograd.graph.saved_tensors_hooks`, each storage once (a tensor saved
by two nodes, like a ReLU output that the next convolution also saves, counts once).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proxynorm.bench.harness import (
    CPU,
    Variant,
    fresh_compile_caches,
    median_ratio,
    peak_mib,
    saved_bytes,
    set_fused,
    time_rounds,
)
from proxynorm.environment import environment
from proxynorm.layers import ProxyNormAct, norm_act
from proxynorm.layers.pn.cpp import use_cpp_kernel
from proxynorm.models import create_model


def _summarize(
    variants: list[Variant], times: dict, baseline: str, device=CPU, also=None
) -> dict[str, dict]:
    """Median time per variant, and its :func:`median_ratio` to the baseline; with ``also`` a
    second baseline's ratio too."""
    rows = {}
    for v in variants:
        row = {"ms": statistics.median(times[v.name]) * 1e3}
        for key, base in (("ratio", baseline), ("ratio_2", also)):
            if base is not None:
                row[key] = median_ratio(times[v.name], times[base])
        row["saved_mib"] = saved_bytes(v.forward) / 2**20
        peak = peak_mib(v, device)
        if peak is not None:
            row["peak_mib"] = peak
        row["runs"] = len(times[v.name])
        rows[v.name] = row
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
    times = time_rounds(variants, repeats, warmup, f"layers {'x'.join(map(str, shape))}")
    rows = _summarize(variants[:-3], times, "BN+ReLU")
    rows.update(_summarize(variants[-3:], times, "act: affine+ReLU"))
    return rows


MODEL_VARIANTS = {  # name: (norm, path of PN's step: fused Function, reference ops, C++ kernel)
    "bn": ("bn", "fused"),
    "gn": ("gn", "fused"),
    "gn+pn (reference)": ("gn+pn", "reference"),
    "gn+pn (fused)": ("gn+pn", "fused"),
    "gn+pn (C++)": ("gn+pn", "cpp"),
}


def _model_variant(
    name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    compiled: bool,
    amp: torch.dtype | None,
    backend: str = "inductor",
    cpp: bool = False,
) -> Variant:
    run = torch.compile(model, backend=backend) if compiled else model

    def forward() -> Tensor:
        use_cpp_kernel(cpp)  # a process-wide switch: on for this variant's calls only
        try:
            with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
                return F.cross_entropy(run(x).float(), y)
        finally:
            use_cpp_kernel(False)

    def step() -> None:
        forward().backward()
        for p in model.parameters():
            p.grad = None

    return Variant(name, step, forward)


def model_classes(size: int) -> int:
    """The benchmark models' number of classes: 10 up to 64×64 images (CIFAR-like), 1000 above
    (ImageNet-like)."""
    return 10 if size <= 64 else 1000


def model_batch(
    batch: int, size: int, fmt=torch.contiguous_format, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor, int]:
    """``(images, labels, num_classes)``: a random training batch for a benchmark model, images
    (batch, 3, size, size) in memory format ``fmt``."""
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    num_classes = model_classes(size)
    return x, torch.randint(0, num_classes, (batch,), device=device), num_classes


def bench_models(
    model: str = "resnet20",
    batch: int = 128,
    size: int = 32,
    groups: int = 8,
    channels_last: bool = False,
    compiled: bool = False,
    repeats: int = 10,
    warmup: int = 2,
    width_mult: float = 1.0,
    device: str | torch.device = "cpu",
    amp: torch.dtype | None = None,
    backend: str = "inductor",
    cpp: bool = False,
) -> dict[str, dict]:
    """One training step (forward, loss, backward; no optimizer) of ``model`` per norm, on
    ``device`` (``amp``: autocast dtype, e.g. ``torch.bfloat16``; ``backend``: of
    ``torch.compile``; ``cpp``: also GN+PN with the opt-in C++ kernel,
    :mod:`proxynorm.layers.pn.cpp`). Ratios against BN
    (``ratio``) and GN (``ratio_2``); on CUDA also the peak memory of a step."""
    torch.manual_seed(0)
    if compiled:  # past tables' recompiles would hit dynamo's limit
        fresh_compile_caches(len(MODEL_VARIANTS))
    device = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, y, num_classes = model_batch(batch, size, fmt, device)
    variants = []
    for name, (spec, path) in MODEL_VARIANTS.items():
        if path == "cpp" and not (cpp and use_cpp_kernel(True)):
            continue
        kw = {"groups": groups} if spec.startswith("gn") else {}
        m = create_model(model, norm=spec, num_classes=num_classes, width_mult=width_mult, **kw)
        m = m.train().to(device=device, memory_format=fmt)
        set_fused(m, path != "reference")
        variants.append(_model_variant(name, m, x, y, compiled, amp, backend, path == "cpp"))
    desc = f"{model} batch {batch} {'channels_last' if channels_last else 'contiguous'}"
    times = time_rounds(variants, repeats, warmup, desc + (" compiled" if compiled else ""), device)
    return _summarize(variants, times, "bn", device, also="gn")


#: Benchmark models: ``NAME`` or ``NAME-bN`` (batch N). PN is for small per-device batches:
#: its per-step cost (proxy statistics of C × n values per layer, Python work) does not shrink
#: with the batch, so its share grows as the batch does.
BENCH_MODELS = {
    "resnet20": {"model": "resnet20", "batch": 128, "size": 32, "width_mult": 1.0},
    "resnet50": {"model": "resnet50", "batch": 16, "size": 128, "width_mult": 1.0},
    # A reduced ResNet-50 (quarter width, 64x64 images) for small batches on a CPU.
    "resnet50r": {"model": "resnet50", "batch": 8, "size": 64, "width_mult": 0.25},
}


def model_setting(name: str) -> dict[str, Any]:
    """The settings of a benchmark model name such as ``resnet20`` or ``resnet20-b8``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    base, _, batch = name.partition("-b")
    if base not in BENCH_MODELS or (batch and not batch.isdigit()) or batch == "0":
        raise ValueError(
            f"unknown benchmark model {name!r}; valid: {', '.join(BENCH_MODELS)}, each with an "
            "optional batch size, e.g. resnet20-b8"
        )
    s = dict(BENCH_MODELS[base], label=base.replace("resnet50r", "resnet50 x0.25"))
    if batch:
        s["batch"] = int(batch)
    return s


def bench_model_arg(name: str) -> str:
    """``name`` if it is a benchmark model (:func:`model_setting`): an argparse ``type``, so that
    the scripts in ``benchmarks/`` reject a bad ``--model`` with the valid names, exit status 2."""
    try:
        model_setting(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def named_model(
    name: str, norm: str, fmt=torch.contiguous_format, **kw
) -> tuple[nn.Module, Tensor, Tensor]:
    """``(model, images, labels)``: the benchmark model ``name`` (:func:`model_setting`) with
    ``norm`` (groups=8; ``kw`` to :func:`~proxynorm.models.create_model`) in memory format
    ``fmt``, and a random training batch for it (drawn after the model's parameters)."""
    s = model_setting(name)
    model = create_model(s["model"], norm=norm, num_classes=model_classes(s["size"]), groups=8,
                         width_mult=s["width_mult"], **kw)  # fmt: skip
    x, y, _ = model_batch(s["batch"], s["size"], fmt)
    return model.to(memory_format=fmt), x, y


def run_benchmarks(
    out: str | Path,
    models: list[str],
    repeats: int = 10,
    compiled: list[str] | None = None,
    layer_shape: tuple[int, int, int, int] = (128, 64, 16, 16),
    cpp: bool = False,
) -> dict[str, Any]:
    """All tables: layers and models, contiguous and channels_last, plus ``torch.compile``'d
    models for those in ``compiled`` (``cpp``: eager GN+PN with the C++ kernel too); writes
    ``bench.json`` and ``bench.md`` under ``out``."""
    compiled = compiled or []
    results: dict[str, Any] = {"environment": environment(), "tables": []}
    for cl in (False, True):
        fmt = "channels_last" if cl else "contiguous"
        rows = bench_layers(layer_shape, channels_last=cl, repeats=max(repeats, 10) * 2)
        results["tables"].append(
            {"kind": "layer", "what": f"{'x'.join(map(str, layer_shape))} {fmt}", "rows": rows}
        )
        for model in models:
            s = model_setting(model)
            if not set(compiled) <= set(models):
                raise ValueError(
                    f"compiled models {compiled} must be benchmarked too (in {models}); "
                    "compiled ones must be benchmarked"
                )
            for comp in (False, True) if model in compiled else (False,):
                rows = bench_models(
                    s["model"],
                    s["batch"],
                    s["size"],
                    channels_last=cl,
                    compiled=comp,
                    repeats=repeats,
                    width_mult=s["width_mult"],
                    cpp=cpp and not comp,
                )
                what = f"{s['label']} batch {s['batch']} {s['size']}x{s['size']} {fmt}"
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
        rows = table["rows"]
        gn = any("ratio_2" in r for r in rows.values())
        peak = any("peak_mib" in r for r in rows.values())
        lines += [
            f"## {table['kind']}: {table['what']}",
            "",
            "| variant | ms | ratio" + (" | × GN" if gn else "") + " | saved for backward (MiB)"
            + (" | peak (MiB)" if peak else "") + " |",
            "|---|---|---|" + ("---|" if gn else "") + "---|" + ("---|" if peak else ""),
        ]  # fmt: skip
        for name, r in rows.items():
            cells = [name, f"{r['ms']:.2f}", f"{r['ratio']:.2f}"]
            cells += [f"{r['ratio_2']:.2f}"] if gn else []
            cells += [f"{r['saved_mib']:.1f}"]
            cells += [f"{r['peak_mib']:.0f}"] if peak else []
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
