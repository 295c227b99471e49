"""Which compute path the paper-protocol CPU runs use (issue 31): one training step of resnet20 at
batch 128 on real CIFAR-10 batches, for BN, GN and GN+PN, on each path the library offers.

Paths: ``eager`` (the Python layers), ``cpp`` (GN+PN's opt-in C++ kernel, ``PROXYNORM_CPP=1``;
BN and GN have no kernel of their own, so their ``cpp`` is their ``eager``), ``compiled``
(``--compile default``), each contiguous and channels_last. A step is what the training loop does
per batch: forward, cross entropy, backward, the recipe's SGD step. Every variant has its own
model and optimizer, built from the same seed; steps are timed in interleaved rounds in a new
random order each (``proxynorm.bench``), after warm-up, on one thread, and an epoch is projected
as 390 steps (the 49,920 images of 50k at batch 128, drop-last).

Before timing, each path is checked to compute the same float32 function as ``eager`` in the
same memory format: loss and every gradient from the same weights and batch, as the largest
relative difference ``|g - g_eager| / |g_eager|`` over the parameter tensors. At initialization
that difference is far above float32's epsilon even for the same code (ReLU flips amplify
rounding), so it is set beside its floor: ``eager`` against ``eager`` with the input scaled by
``1 + 2**-23``, one rounding step. A path whose difference is of the floor's order computes the
same float32 function; one far above it does not.

    OMP_NUM_THREADS=1 python experiments/cifar10_paths.py --rounds 20 \\
        --out experiments/results/cifar10_cpu/paper160/paths

writes ``paths.json`` and ``paths.md`` there. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from proxynorm.bench import Variant, fresh_compile_caches, median_ratio, time_rounds
from proxynorm.data import normalize
from proxynorm.environment import environment
from proxynorm.layers.pn import cpp as cpp_kernel
from proxynorm.train import build_config
from proxynorm.train.loop import build_data, build_model
from proxynorm.train.optim import build_optimizer

NORMS = ("bn", "gn", "gn+pn")
STEPS_PER_EPOCH = 390


def variant_names(norms=NORMS) -> list[tuple[str, str, bool]]:
    """(norm, path, channels_last) of every variant: ``cpp`` only where it differs."""
    out = []
    for norm in norms:
        for cl in (False, True):
            for path in ("eager", "cpp", "compiled"):
                if path == "cpp" and norm != "gn+pn":
                    continue
                out.append((norm, path, cl))
    return out


def label(norm: str, path: str, cl: bool) -> str:
    return f"{norm} {path} {'channels_last' if cl else 'contiguous'}"


def build_step(cfg, norm, path, cl, x, y, num_classes):
    """A training step of ``norm`` on ``path``: returns (step, loss_and_grads)."""
    torch.manual_seed(0)
    ncfg = build_config("cifar", **{**cfg, "norm": norm, "channels_last": cl})
    model = build_model(ncfg, num_classes)
    if cl:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    trainer = torch.compile(model) if path == "compiled" else model
    optimizer = build_optimizer(model, ncfg)
    use_cpp = path == "cpp"

    def loss_and_grads():
        cpp_kernel.use_cpp_kernel(use_cpp)
        try:
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(trainer(x), y)
            loss.backward()
        finally:
            cpp_kernel.use_cpp_kernel(False)
        return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    def step():
        cpp_kernel.use_cpp_kernel(use_cpp)
        try:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(trainer(x), y).backward()
            optimizer.step()
        finally:
            cpp_kernel.use_cpp_kernel(False)

    return step, loss_and_grads


def difference(reference, other) -> dict:
    """Loss difference and the largest relative gradient difference over parameter tensors."""
    (l0, g0), (l1, g1) = reference, other
    rel = max(float((g1[k] - g0[k]).norm() / g0[k].norm().clamp_min(1e-30)) for k in g0)
    return {"loss_diff": abs(float(l1 - l0)), "grad_rel_diff": rel}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.zip")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timed rounds")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--norms", default=",".join(NORMS))
    p.add_argument("--subset", type=int, default=None, help="training images to load (smoke)")
    p.add_argument("--width-mult", type=float, default=1.0, help="(smoke tests)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    cfg = dict(
        model="resnet20",
        data="cifar10",
        data_dir=args.data_dir,
        download=False,
        groups=8,
        subset=args.subset,
        width_mult=args.width_mult,
    )
    data = build_data(build_config("cifar", norm="bn", **cfg))
    data.train.set_epoch(0)
    xb, y = next(iter(data.train))
    x = normalize(xb, data.mean, data.std)

    names = variant_names(tuple(args.norms.split(",")))
    fresh_compile_caches(len(names))
    built = {label(*n): build_step(cfg, *n, x, y, data.num_classes) for n in names}
    # same float32 function: from the same initial weights, before any step changes them
    checks = {}
    for norm, path, cl in names:
        ref = built[label(norm, "eager", cl)][1]()
        if path == "eager":
            _, nudged = build_step(cfg, norm, path, cl, x * (1 + 2**-23), y, data.num_classes)
            checks[label(norm, path, cl)] = {"floor": difference(ref, nudged())}
        else:
            checks[label(norm, path, cl)] = difference(ref, built[label(norm, path, cl)][1]())
    variants = [Variant(k, step, lambda: torch.zeros(())) for k, (step, _) in built.items()]
    times = time_rounds(variants, args.rounds, args.warmup, "paths")

    rows = {}
    for norm, path, cl in names:
        k = label(norm, path, cl)
        base = times[label(norm, "eager", False)]
        med = statistics.median(times[k])
        rows[k] = {
            "norm": norm,
            "path": path,
            "channels_last": cl,
            "step_s": med,
            "epoch_train_s": med * STEPS_PER_EPOCH,
            "x_eager_contiguous": median_ratio(times[k], base),
            **checks.get(k, {}),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    doc = {
        "settings": settings | {"batch": len(y)},
        "environment": environment(),
        "rows": rows,
        "times": times,
    }
    (args.out / "paths.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "paths.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [
        f"# Compute paths for the paper-protocol runs (resnet20, batch {s['batch']}, "
        f"{doc['environment']['threads']} thread(s))",
        "",
        f"`OMP_NUM_THREADS=1 python experiments/cifar10_paths.py --rounds {s['rounds']}` "
        f"(torch {doc['environment']['torch']}, commit {doc['environment']['commit']}). "
        "Median step of interleaved rounds; epoch = 390 steps (training only; the test pass "
        "is eager on every path). Same function: largest gradient difference against `eager` "
        "in the same format (largest over parameter tensors of |g - g_eager| / |g_eager|); "
        "for `eager`, its floor: the same code with the input scaled by 1 + 2^-23.",
        "",
        "| norm | path | format | step ms | epoch s (projected) | × same norm eager contiguous "
        "| loss diff | grad rel diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"].values():
        d = r.get("floor", r)
        floor = " (floor)" if "floor" in r else ""
        diff = f"{d['loss_diff']:.1e} | {d['grad_rel_diff']:.1e}{floor}"
        fmt = "channels_last" if r["channels_last"] else "contiguous"
        lines.append(
            f"| {r['norm']} | {r['path']} | {fmt}"
            f" | {1000 * r['step_s']:.0f} | {r['epoch_train_s']:.0f} | "
            f"{r['x_eager_contiguous']:.3f} | {diff} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
