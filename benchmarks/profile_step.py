"""Where a resnet20 training step spends its time, per PyTorch operator (torch.profiler).

    python benchmarks/profile_step.py > benchmarks/results/profile_step.md
    python benchmarks/profile_step.py 8 > benchmarks/results/profile_step_b8.md

Batch 128 (or the first argument), 32x32, channels_last, 2 warm-up steps then 4 profiled steps
per spec; self CPU time per step of the operators (and autograd Functions) above 1% of the step.
"""

import sys

import torch
import torch.nn.functional as F
from torch.profiler import profile

from proxynorm.models import create_model

STEPS = 4


def main(batch: int = 128) -> None:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, "
        "channels_last\n"
    )
    for spec in ("bn", "gn", "gn+pn"):
        kw = {"groups": 8} if spec.startswith("gn") else {}
        model = create_model("resnet20", norm=spec, **kw).to(memory_format=torch.channels_last)
        for _ in range(2):
            F.cross_entropy(model(x), y).backward()
        with profile() as prof:
            for _ in range(STEPS):
                F.cross_entropy(model(x), y).backward()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / STEPS / 1e3
        print(f"## {spec}: {total:.0f} ms of self CPU time per step\n")
        print("| operator | ms per step | share |\n|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total):
            ms = e.self_cpu_time_total / STEPS / 1e3
            if ms < 0.01 * total:
                break
            print(f"| {e.key} | {ms:.1f} | {100 * ms / total:.0f}% |")
        print()


if __name__ == "__main__":
    main(*map(int, sys.argv[1:2]))
