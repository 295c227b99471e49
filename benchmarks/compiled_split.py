"""Where a compiled GN+PN layer's extra time goes: inductor's kernels, or the Python around them.

    OMP_NUM_THREADS=2 python benchmarks/compiled_split.py --json out.json
    OMP_NUM_THREADS=2 python benchmarks/compiled_split.py --shape 1,16,2,2

Compiles a stack of ``--layers`` GN+ReLU and GN+PN layers on one input shape, each in a child
process with ``TORCH_COMPILE_DEBUG=1`` (which writes inductor's output code) and inductor's caches
off (a cache hit writes none). Then it times each graph's ``call`` (forward and backward) by
itself on random inputs (``calls`` calls per round, the four graphs in interleaved rounds of
``proxynorm.bench``), and within it the fused C++ kernel: ``call − kernel`` is the Python of
the graph wrapper (buffer allocations, input size/stride checks, the returned tuple). What neither
holds (autograd's gradient accumulation, dynamo's guards, AOTAutograd's saved-tensor handling) is
the rest of a training step's difference, measured by ``compiled_layer_cost.py``.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from proxynorm.bench import Variant, time_rounds, write_script_json

_CHILD = """
import sys, torch
from torch import nn
from proxynorm.layers import norm_act
spec, layers, shape = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
torch.manual_seed(0)
model = torch.compile(nn.Sequential(*[norm_act(spec, shape[1], groups=8) for _ in range(layers)]))
x = torch.randn(*shape, requires_grad=True)
for _ in range(2):
    model(x).sum().backward()
"""


def _output_code(spec: str, layers: int, shape: str, where: Path) -> dict[str, Path]:
    """``{"forward": path, "backward": path}`` of inductor's output code for the stack."""
    env = os.environ | {"TORCH_COMPILE_DEBUG": "1", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    subprocess.run([sys.executable, "-c", _CHILD, spec, str(layers), shape], cwd=where, env=env,
                   check=True, capture_output=True)  # fmt: skip
    found = {"forward" if "forward" in p.parent.name else "backward": p
             for p in where.rglob("output_code.py")}  # fmt: skip
    return {k: found[k] for k in ("forward", "backward")}


def _graph_variant(name: str, path: Path, calls: int) -> tuple[Variant, list[float]]:
    """A variant whose step makes ``calls`` calls of the output code's ``call``, and the µs per
    call its kernel spent in each step (appended by the step)."""
    spec = importlib.util.spec_from_file_location(f"oc_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (kernel_name,) = [k for k in vars(mod) if k.startswith("cpp_fused")]
    kernel, spent, inside = getattr(mod, kernel_name), [0.0], []

    def timed(*args):
        t = time.perf_counter()
        kernel(*args)
        spent[0] += time.perf_counter() - t

    setattr(mod, kernel_name, timed)
    args = mod.get_args()

    def step() -> None:
        spent[0] = 0.0
        for _ in range(calls):
            mod.call(list(args))
        inside.append(spent[0] / calls * 1e6)

    return Variant(name, step, step), inside


def _time_graphs(paths: dict[str, Path], calls: int, rounds: int) -> dict[str, dict]:
    """Per graph, the median over interleaved rounds of µs per ``call`` and per kernel call
    within it."""
    built = {name: _graph_variant(name, path, calls) for name, path in paths.items()}
    times = time_rounds([v for v, _ in built.values()], rounds, 1, "graphs")
    return {name: {"call_us": statistics.median(times[name]) / calls * 1e6,
                   "kernel_us": statistics.median(inside[-rounds:])}
            for name, (_, inside) in built.items()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=3, help="norm-act layers in the stack")
    p.add_argument(
        "--shape",
        default="1,16,32,32",
        help="input N,C,H,W (resnet20's first stage at batch 1 by default; C >= 8)",
    )
    p.add_argument("--calls", type=int, default=300, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (median)")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args()
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in ("gn", "gn+pn"):
            where = Path(tmp, spec)
            where.mkdir()
            for graph, path in _output_code(spec, args.layers, args.shape, where).items():
                paths[f"{spec} {graph}"] = path
        rows = _time_graphs(paths, args.calls, args.rounds)
    print(
        f"{args.layers} layers on ({args.shape}), {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; µs per graph call, median of {args.rounds} rounds\n"
    )
    print(
        "| graph | GN+ReLU kernel | GN+ReLU wrapper | GN+PN kernel | GN+PN wrapper "
        "| GN+PN − GN+ReLU per layer: kernel, wrapper |"
    )
    print("|---|---|---|---|---|---|")
    for graph in ("forward", "backward"):
        g, pn = rows[f"gn {graph}"], rows[f"gn+pn {graph}"]
        gw, pw = g["call_us"] - g["kernel_us"], pn["call_us"] - pn["kernel_us"]
        dk = (pn["kernel_us"] - g["kernel_us"]) / args.layers
        print(
            f"| {graph} | {g['kernel_us']:.1f} | {gw:.1f} | {pn['kernel_us']:.1f} | {pw:.1f} "
            f"| {dk:.1f}, {(pw - gw) / args.layers:.1f} |"
        )
    if args.json:
        write_script_json(args.json, vars(args), rows)


if __name__ == "__main__":
    main()
