"""Where a resnet20 training step spends its time, per PyTorch operator (torch.profiler).

    python benchmarks/profile_step.py > benchmarks/results/profile_step.md
    python benchmarks/profile_step.py 8 > benchmarks/results/profile_step_b8.md
    python benchmarks/profile_step.py 1 --compile > benchmarks/results/profile_step_b1_compiled.md

Batch 128 (or the first argument), 32x32, channels_last, 2 warm-up steps then 4 profiled steps
per spec; self CPU time and calls per step of the operators (and autograd Functions) above 1% of
the step. ``--compile``: the model under ``torch.compile`` (inductor's generated code shows as
one "CompiledFxGraph" row per graph).
"""

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import profile

from proxynorm.models import create_model

STEPS = 4


def main(batch: int = 128, compiled: bool = False) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, "
        f"channels_last{', torch.compile' if compiled else ''}\n"
    )
    for spec in ("bn", "gn", "gn+pn"):
        kw = {"groups": 8} if spec.startswith("gn") else {}
        model = create_model("resnet20", norm=spec, **kw).to(memory_format=torch.channels_last)
        if compiled:
            torch._dynamo.reset()
            model = torch.compile(model)
        for _ in range(3 if compiled else 2):
            F.cross_entropy(model(x), y).backward()
        with profile() as prof:
            for _ in range(STEPS):
                F.cross_entropy(model(x), y).backward()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / STEPS / 1e3
        print(f"## {spec}: {total:.0f} ms of self CPU time per step\n")
        print("| operator | ms per step | share | calls per step |\n|---|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total):
            ms = e.self_cpu_time_total / STEPS / 1e3
            if ms < 0.01 * total:
                break
            calls = e.count / STEPS
            print(f"| {e.key[:60]} | {ms:.1f} | {100 * ms / total:.0f}% | {calls:g} |")
        print()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("batch", nargs="?", type=int, default=128)
    p.add_argument("--compile", action="store_true", help="profile the compiled model")
    args = p.parse_args()
    main(args.batch, args.compile)
