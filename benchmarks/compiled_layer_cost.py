"""PN's fixed cost under torch.compile, taken apart: one compiled training step of GN+PN variants
against GN+ReLU in the same process, median of interleaved rounds.

    OMP_NUM_THREADS=2 python benchmarks/compiled_layer_cost.py                  # 19-layer stack
    OMP_NUM_THREADS=2 python benchmarks/compiled_layer_cost.py --channels 128
    OMP_NUM_THREADS=2 python benchmarks/compiled_layer_cost.py --model resnet20-b1 --json out.json
    OMP_NUM_THREADS=2 python benchmarks/compiled_layer_cost.py --model resnet20-b1 \
        --inductor size_asserts=False                # any inductor option, every variant

The default model is a stack of norm-act layers on a tiny input (batch 1, 2 x 2), where almost
nothing depends on the batch; ``--model`` takes a ``proxynorm bench`` model (``resnet20-b1``,
``resnet50r-b2``...; ``--channels-last`` for that memory format). Variants, each one change
against the shipped GN+PN:

- ``GN+PN C×n one-pass``: ReLU's proxy moments from the C x n values z~ (the sum and sum of
  squares of z~ − φ(B) in one pass, as for the other activations) instead of its closed form
  from the active quantiles' count and sums; the backward then recomputes or keeps z~.
- ``GN+PN quantiles per layer``: each layer its own quantile tensor (the layout before the
  shared tensor): each is one more graph input, with its guards and checks.
- ``GN+PN two-pass moments``: the proxy mean, then the centered squares of z~, as in eager mode
  (the compiled formula before the one-pass shifted sums): inductor stores z~ between the two.
- ``GN+PN before``: two-pass moments and quantiles per layer, i.e. the compiled path as it was
  before all three changes.
- ``GN+PN n=16``: 16 proxy quantiles instead of 256: what the C x n proxy values still cost.
- ``GN+PN no proxy affine``: without γ~, β~ (``proxy_affine=False``): what two more parameters
  per layer cost (graph inputs and outputs, gradient accumulation); not a setting to train with.
- ``GN+PN γ~β~ packed``: γ~ and β~ as the two rows of one (2, C) parameter per layer (the layers
  read views of it): what one parameter per layer instead of two would save. It changes the
  state_dict's keys, so it is a measurement, not a layout the layers ship.

Rounds run the variants in a new random order each (``proxynorm.bench``): in a fixed order, the
same code came out 3-4 % slower (× GN+ReLU, resnet20-b1) timed second than timed third.
"""

import argparse
import ast
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from proxynorm.bench import (
    Variant,
    bench_model_arg,
    fresh_compile_caches,
    median_ratio,
    named_model,
    time_rounds,
    write_script_json,
)
from proxynorm.layers import ProxyNormAct, norm_act, proxy_quantiles
from proxynorm.layers.pn import stats  # its COMPILED_PROXY switch


def _own_quantiles(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, ProxyNormAct):
            m.quantiles = proxy_quantiles(m.n_samples)
    return model


class _PackedProxyAffine(ProxyNormAct):
    """A ProxyNormAct whose γ~ and β~ are the rows of one (2, C) parameter ``proxy``."""

    proxy_weight = property(lambda self: self.proxy[0])
    proxy_bias = property(lambda self: self.proxy[1])


def _pack_proxy_affine(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, ProxyNormAct) and m.proxy_affine:
            packed = torch.stack([m.proxy_weight.detach(), m.proxy_bias.detach()])
            del m._parameters["proxy_weight"], m._parameters["proxy_bias"]
            m.__class__ = _PackedProxyAffine
            m.proxy = nn.Parameter(packed)
    return model


def _as_built(model: nn.Module) -> nn.Module:
    return model


#: name: (norm, norm-act keyword arguments, change to the built model, proxy statistics under
#: compile: "closed" (ReLU's closed form, shipped), "one-pass" (shifted sums over z~), "two-pass")
VARIANTS = {
    "GN+ReLU": ("gn", {}, _as_built, "closed"),
    "GN+PN": ("gn+pn", {}, _as_built, "closed"),
    "GN+PN C×n one-pass": ("gn+pn", {}, _as_built, "one-pass"),
    "GN+PN quantiles per layer": ("gn+pn", {}, _own_quantiles, "closed"),
    "GN+PN two-pass moments": ("gn+pn", {}, _as_built, "two-pass"),
    "GN+PN before": ("gn+pn", {}, _own_quantiles, "two-pass"),
    "GN+PN n=16": ("gn+pn", {"n_samples": 16}, _as_built, "closed"),
    "GN+PN no proxy affine": ("gn+pn", {"proxy_affine": False}, _as_built, "closed"),
    "GN+PN γ~β~ packed": ("gn+pn", {}, _pack_proxy_affine, "closed"),
}


def _build(spec: str, kw: dict, args) -> tuple[nn.Module, tuple]:
    """``(model, (input, target or None))`` for the stack or a benchmark model."""
    if args.model == "stack":
        model = nn.Sequential(*[norm_act(spec, args.channels, groups=8, **kw)
                                for _ in range(args.layers)])  # fmt: skip
        return model, (torch.randn(1, args.channels, 2, 2, requires_grad=True), None)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model, x, y = named_model(args.model, spec, fmt, **kw)
    return model, (x, y)


def _variant(name: str, args) -> Variant:
    spec, kw, change, path = VARIANTS[name]
    torch.manual_seed(0)
    model, (x, y) = _build(spec, kw, args)
    model = change(model.train())
    run = torch.compile(model, backend=args.backend, options=dict(args.inductor) or None)

    def loss() -> torch.Tensor:
        stats.compiled_proxy(path)  # read while dynamo traces: each variant its own graph
        out = run(x)
        return out.sum() if y is None else F.cross_entropy(out, y)

    def step() -> None:
        loss().backward()
        for p in model.parameters():
            p.grad = None

    return Variant(name, step, loss)


def _model_arg(name: str) -> str:
    return name if name == "stack" else bench_model_arg(name)


def _inductor_option(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` with a Python literal VALUE, as ``(KEY, VALUE)``."""
    key, sep, value = item.partition("=")
    try:
        if sep:
            return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        pass
    raise argparse.ArgumentTypeError(f"takes KEY=VALUE with a Python literal VALUE, got {item!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="stack", type=_model_arg,
                   help="'stack' or a bench model, e.g. resnet20-b1")
    p.add_argument("--layers", type=int, default=19, help="stack: norm-act layers (resnet20: 19)")
    p.add_argument("--channels", type=int, default=16, help="stack: channels C per layer (>= 8)")
    p.add_argument("--channels-last", action="store_true", help="model: channels_last format")
    p.add_argument("--rounds", type=int, default=300, help="timed interleaved rounds")
    p.add_argument("--variants", help="comma-separated subset (GN+ReLU, the baseline, always "
                   "included); default all")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    p.add_argument("--inductor", action="append", default=[], type=_inductor_option,
                   metavar="KEY=VALUE",
                   help="an inductor option for every variant, e.g. size_asserts=False "
                   "(repeatable; torch.compile(options=...))")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args()
    names = list(VARIANTS)
    if args.variants:
        chosen = [n.strip() for n in args.variants.split(",")]
        names = ["GN+ReLU"] + [n for n in chosen if n != "GN+ReLU"]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            p.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    if args.channels < 8:
        p.error("--channels must be >= 8 (GroupNorm with 8 groups)")
    fresh_compile_caches(len(names))  # (9 variants had run the last one eager)
    variants = [_variant(n, args) for n in names]
    times = time_rounds(variants, args.rounds, 10, args.model)
    base = times["GN+ReLU"]
    rows = {}
    for v in variants:
        t = statistics.median(times[v.name])
        rows[v.name] = {"ms": t * 1e3, "x_gn_relu": median_ratio(times[v.name], base)}
        if args.model == "stack":
            rows[v.name]["over_gn_per_layer_us"] = (t - statistics.median(base)) * 1e6 / args.layers
    what = (f"{args.layers} layers of C = {args.channels} on (1, {args.channels}, 2, 2)"
            if args.model == "stack" else
            f"{args.model} {'channels_last' if args.channels_last else 'contiguous'}")  # fmt: skip
    print(f"{what}, compiled ({args.backend}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {args.rounds} interleaved rounds "
          "in random order\n")
    per_layer = args.model == "stack"
    print("| variant | ms per step | × GN+ReLU |" + (" over GN+ReLU, µs per layer |" * per_layer))
    print("|---|---|---|" + "---|" * per_layer)
    for name, r in rows.items():
        cell = f" {r['over_gn_per_layer_us']:.1f} |" if per_layer else ""
        print(f"| {name} | {r['ms']:.2f} | {r['x_gn_relu']:.3f} |{cell}")
    if args.json:
        write_script_json(args.json, vars(args), rows)


if __name__ == "__main__":
    main()
