"""What inductor's compiled training step does per tensor, GN+PN against GN+ReLU: a census of
the generated forward and backward wrappers (torch.compile, CPU).

    OMP_NUM_THREADS=2 python benchmarks/compiled_census.py --model resnet20-b1 --json out.json

At batch 1-2 a compiled step is mostly fixed costs, and what PN adds there (issue 19: compiled
GN+PN 1.08-1.15 x GN+ReLU) is Python-level work in the wrappers inductor writes, not arithmetic:
each buffer allocated, size check, view, kernel argument and tensor handed from forward to
backward is one more call, each parameter one more gradient buffer and accumulation. This script
counts them from the output code (``torch._inductor.utils.run_and_get_code``), per step and per
norm-act layer, so that a change to the layers can be checked for what it adds or removes there
without timing. Counts depend on the torch version; the output code is read, never run.

- ``kernel calls`` / ``kernel args``: calls of inductor's C++ kernels and the tensors passed.
- ``buffers``: ``empty_strided`` allocations; ``views``: ``reinterpret_tensor``;
  ``size checks``: ``assert_size_stride`` (inputs and extern-kernel outputs); ``dels``.
- ``returned``: the forward's outputs (the model's output, then what the backward reads) and
  the backward's (the gradients).
- ``barriers``: OpenMP ``for``/``single`` constructs per step (each ends in a barrier).
- ``parameters``: tensors that get a gradient (one accumulation each per step).
"""

import argparse
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

from proxynorm.bench import bench_model_arg, named_model, write_script_json
from proxynorm.layers import NormAct

#: row: regular expression counted in the wrapper's ``call`` body
_PATTERNS = {
    "buffers": r"\bempty_strided_\w+\(",
    "views": r"\breinterpret_tensor\(",
    "size checks": r"\bassert_size_stride\(",
    "dels": r"\bdel \w",
}
ROWS = ["kernel calls", "kernel args", *_PATTERNS, "returned", "barriers"]


def _top_level_items(text: str) -> int:
    """The number of comma-separated items of ``text`` outside brackets."""
    depth, items, seen = 0, 0, False
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items, seen = items + seen, False
            continue
        seen = seen or not ch.isspace()
    return items + seen


def census(code: str) -> dict[str, int]:
    """The counts of :data:`ROWS` in one output-code module."""
    body = code[code.index("def call(") :]
    kernels = dict(re.findall(r"^(cpp_fused\w*) = async_compile\.cpp_pybinding\((.*?)'''\)",
                              code, re.S | re.M))  # fmt: skip
    calls = re.findall(r"\n\s+(cpp_fused\w*)\((.*)\)\n", body)
    counts = {"kernel calls": len(calls),
              "kernel args": sum(_top_level_items(args) for _, args in calls)}  # fmt: skip
    counts |= {row: len(re.findall(p, body)) for row, p in _PATTERNS.items()}
    ret = body[body.rindex("return (") + len("return (") :].split("\n")[0]
    counts["returned"] = _top_level_items(ret.rstrip().removesuffix(")"))
    counts["barriers"] = sum(kernels[name].count("#pragma omp for")
                             + kernels[name].count("#pragma omp single")
                             for name, _ in calls)  # fmt: skip
    return counts


def step_census(name: str, norm: str, fmt) -> dict:
    """Compile one training step of ``name`` with ``norm`` and count its two graphs."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x, y = named_model(name, norm, fmt)
    run = torch.compile(model.train())
    _, codes = run_and_get_code(lambda: F.cross_entropy(run(x), y).backward())
    if len(codes) != 2:
        raise RuntimeError(f"{norm}: expected one forward and one backward graph, got "
                           f"{len(codes)} (a graph break?)")  # fmt: skip
    fw, bw = (census(c) for c in codes)
    return {"forward": fw, "backward": bw,
            "parameters": sum(p.requires_grad for p in model.parameters()),
            "norm layers": sum(isinstance(m, NormAct) for m in model.modules())}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20-b1", type=bench_model_arg,
                   help="a bench model, e.g. resnet50r-b2")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--norms", default="gn,gn+pn", help="comma-separated; the first is the base")
    p.add_argument("--json", type=Path, help="also write the counts here")
    args = p.parse_args()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    norms = [n.strip() for n in args.norms.split(",")]
    rows = {n: step_census(args.model, n, fmt) for n in norms}
    base, layers = rows[norms[0]], rows[norms[0]]["norm layers"]
    print(f"{args.model} {'channels_last' if args.channels_last else 'contiguous'}, "
          f"torch {torch.__version__}, {layers} norm-act layers; per training step "
          f"(in brackets: over {norms[0]}, per norm-act layer)\n")  # fmt: skip
    print("| graph | count | " + " | ".join(norms) + " |")
    print("|---|---|" + "---|" * len(norms))

    def cell(n: str, value: float, base_value: float) -> str:
        return f"{value}" + ("" if n == norms[0] else f" ({(value - base_value) / layers:+.1f})")

    for graph in ("forward", "backward"):
        for row in ROWS:
            cells = [cell(n, rows[n][graph][row], base[graph][row]) for n in norms]
            print(f"| {graph} | {row} | " + " | ".join(cells) + " |")
    cells = [cell(n, rows[n]["parameters"], base["parameters"]) for n in norms]
    print("| step | parameters | " + " | ".join(cells) + " |")
    if args.json:
        write_script_json(args.json, vars(args), rows)


if __name__ == "__main__":
    main()
