"""A whole training step with the optimizer (forward, loss, backward, SGD step, zero_grad), GN+ReLU
and GN+PN, with PyTorch's three SGD implementations, in the same process: median of interleaved
rounds in random order.

    OMP_NUM_THREADS=2 python benchmarks/optimizer_step.py --model resnet20-b1 --compile
    OMP_NUM_THREADS=2 python benchmarks/optimizer_step.py --model resnet20 --rounds 10

``proxynorm bench`` times forward and backward only. A training step also updates every
parameter, and on a CPU ``torch.optim.SGD`` defaults to its for-loop implementation, a few Python
level operators per parameter tensor; GN+PN has two more parameters per norm layer (γ~, β~) than
GN+ReLU. The implementations:

- ``for-loop``: the CPU default (``foreach=False``);
- ``foreach``: one multi-tensor operator per update term (``foreach=True``);
- ``fused``: one fused kernel over all parameters (``fused=True``; CPU since torch 2.4), what
  ``proxynorm.train.optim.build_optimizer`` uses where it can.

SGD as the CIFAR recipe: momentum 0.9, weight decay 1e-4 on every parameter.
"""

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from proxynorm.bench import (
    Variant,
    bench_model_arg,
    fresh_compile_caches,
    median_ratio,
    named_model,
    time_rounds,
    write_script_json,
)
from proxynorm.train.optim import fused_sgd_available, weight_decay_groups

NORMS = {"GN+ReLU": "gn", "GN+PN": "gn+pn"}
IMPLS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _variant(norm: str, impl: str, args) -> Variant:
    torch.manual_seed(0)
    model, x, y = named_model(args.model, NORMS[norm])
    model.train()
    opt = torch.optim.SGD(weight_decay_groups(model, 1e-4, "all"), lr=0.1, momentum=0.9,
                          **IMPLS[impl])  # fmt: skip
    run = torch.compile(model, backend=args.backend) if args.compile else model

    def loss() -> torch.Tensor:
        return F.cross_entropy(run(x), y)

    def step() -> None:
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Variant(f"{norm}, {impl}", step, loss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20-b1", type=bench_model_arg,
                   help="a proxynorm bench model")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (tests: aot_eager)")
    p.add_argument("--rounds", type=int, default=300, help="timed interleaved rounds")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args()
    impls = [i for i in IMPLS if i != "fused" or fused_sgd_available()]
    if args.compile:
        fresh_compile_caches(len(NORMS) * len(impls))
    variants = [_variant(n, i, args) for n in NORMS for i in impls]
    times = time_rounds(variants, args.rounds, 5, args.model)
    base = times["GN+ReLU, for-loop"]
    rows = {}
    for v in variants:
        norm, impl = v.name.split(", ")
        same_impl = times[f"GN+ReLU, {impl}"]
        rows[v.name] = {
            "ms": statistics.median(times[v.name]) * 1e3,
            "x_gn_for_loop": median_ratio(times[v.name], base),
            "x_gn_same_sgd": median_ratio(times[v.name], same_impl),
        }
    mode = f"compiled ({args.backend})" if args.compile else "eager"
    missing = "" if "fused" in impls else "; no fused SGD on CPU in this torch"
    print(f"{args.model}, {mode}, training step with SGD, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {args.rounds} interleaved rounds in random "
          f"order{missing}\n")  # fmt: skip
    print("| norm, SGD | ms per step | × GN+ReLU, for-loop | × GN+ReLU, same SGD |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ms']:.2f} | {r['x_gn_for_loop']:.3f} | {r['x_gn_same_sgd']:.3f} |")
    if args.json:
        write_script_json(args.json, vars(args), rows)


if __name__ == "__main__":
    main()
