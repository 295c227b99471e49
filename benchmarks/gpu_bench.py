"""GPU benchmark of PN where it is used: small per-device batches (issue 19).

One training step (forward, loss, backward) of BN, GN, GN+PN (fused) and GN+PN (reference) in
interleaved rounds, median time, ratio to BN and to GN, peak memory (`max_memory_allocated`):

    resnet50 at 32 and 2 images per device, 224x224, bf16 autocast, channels_last and contiguous
    resnet20 at 128 and 8 images, 32x32, bf16 autocast, channels_last
    eager everywhere; `torch.compile`d for resnet50 at 2 (channels_last) and resnet20 at 8

It stops starting new tables when `--budget` seconds are spent (compilation is the slow part),
and says which it skipped. `benchmarks/run_gpu.sh` runs it; `--tiny --device cpu` is the suite's
smoke test (tiny models, a compiler-free compile backend).

    python benchmarks/gpu_bench.py --out benchmarks/results/gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from proxynorm.bench import bench_models, markdown
from proxynorm.environment import environment

# (model, batch, size, channels_last, compiled)
TABLES = [
    ("resnet50", 32, 224, True, False),
    ("resnet50", 32, 224, False, False),
    ("resnet50", 2, 224, True, False),
    ("resnet50", 2, 224, False, False),
    ("resnet20", 128, 32, True, False),
    ("resnet20", 8, 32, True, False),
    ("resnet50", 2, 224, True, True),
    ("resnet20", 8, 32, True, True),
]
TINY = [("resnet20", 2, 16, True, False), ("resnet20", 2, 16, False, True)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--budget", type=float, default=160.0, help="seconds before skipping tables")
    p.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke test)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--out", default="benchmarks/results/gpu")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to do (use --device cpu --tiny for a smoke test)")
        return 1
    t0 = time.perf_counter()
    tables, skipped = [], []
    amp = torch.bfloat16
    for model, batch, size, cl, compiled in TINY if args.tiny else TABLES:
        what = (f"{model} batch {batch} {size}x{size} {'channels_last' if cl else 'contiguous'}"
                + (" compiled" if compiled else ""))  # fmt: skip
        if time.perf_counter() - t0 > args.budget:
            skipped.append(what)
            continue
        if compiled:
            torch._dynamo.reset()
        rows = bench_models(
            model, batch, size, channels_last=cl, compiled=compiled,
            repeats=2 if args.tiny else args.repeats, warmup=1 if args.tiny else 3,
            width_mult=0.25 if args.tiny else 1.0, groups=2 if args.tiny else 8,
            device=args.device, amp=amp,
            backend=args.compile_backend,
        )  # fmt: skip
        tables.append({"kind": "model", "what": what + ", bf16 autocast", "rows": rows})
        print(f"{what}: {time.perf_counter() - t0:.0f} s", flush=True)
    results = {"environment": environment(), "tables": tables, "skipped": skipped,
               "seconds": time.perf_counter() - t0}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    if skipped:
        text += "\nSkipped (time budget): " + "; ".join(skipped) + "\n"
    (out / "bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
