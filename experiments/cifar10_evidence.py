"""CIFAR-10 (JPEG) evidence for "should I replace BN with GN+PN, and when?" (issue 14), on CPU.

Three groups of runs, all through the public CLI (`proxynorm train --resume`), at the protocol of
`experiments/cifar10_cpu.sh` (resnet20, batch 128, channels_last, GN with 8 groups, the cifar
recipe scaled to the run's epochs, a 128-image power probe after every epoch):

    devices   BN with its statistics over 2, 4, 8, 16, 32 images (ghost batches: the batch of 128
              split as over 128/k devices), class-balanced 10k subset, 20 epochs, seeds 0 and 1
    full      BN and GN+PN (seeds 0, 1) and GN (seed 0) on all 50k training images, 30 epochs
              (~11.7k optimizer steps, against 1.6k at the 10k/20-epoch protocol)
    drivers   one change at a time at the 10k/20-epoch protocol: GN+PN with 2, 4, 16 groups,
              GN+PN without beta~/gamma~, weight decay 5e-4 (BN and GN+PN), Nesterov + cosine
              (BN and GN+PN)
    head      (issue 31) the full-data GN+PN runs again at the current commit, seeds 0 and 1,
              with the same flags: full50k-head/gn+pn/seed<k>
    paper160  (issue 31) the paper's protocol (Appendix A.4, Table 15): the cifar recipe as
              written, 160 epochs on all 50k images, in pairs whose partial results are already
              useful: BN 0 + GN+PN 0, GN 0 + GN+PN 1, BN 1 + GN 1, BN over 2 images 0 + GN+PN 2;
              on the fastest path that computes the same float32 function, the same for every
              norm (eager, channels_last, PROXYNORM_CPP=1, which only GN+PN steps use:
              paper160/paths/paths.md, ``experiments/cifar10_paths.py``)

Runs are listed in priority order (seed 0 of everything before seed 1, so that a partial
experiment already covers each question) and taken by ``--workers`` processes, each pinned to
one thread (two 1-thread runs side by side use 2 cores better than one 2-thread run). A run is
claimed by creating its directory's ``.claim`` file; finished runs (``final.json``) are skipped
and interrupted ones resume from their checkpoint, so re-running the command continues the
experiment (stale claims of dead workers: ``--reclaim``). ``RESULTS=DIR`` writes elsewhere (e.g.
from a worktree of a fixed commit into the main checkout's results).

    python experiments/cifar10_evidence.py --workers 2            # everything (~8 h on 2 cores)
    python experiments/cifar10_evidence.py --only head,paper160 --reclaim  # issue 31 (~32 h)
    python experiments/cifar10_evidence.py --only devices --list  # what would run
    python experiments/cifar10_report.py                          # the page, from what finished
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cifar10_gpu import PROTOCOL  # same folder

ROOT = Path(__file__).resolve().parent.parent
DATA = "../shared/data/cifar10-jpeg.zip"
OUT = Path(os.environ.get("RESULTS", ROOT / "experiments" / "results" / "cifar10_cpu"))
# The paper's CIFAR flags (shared with the GPU runner), at the CPU protocol's batch of 128.
COMMON = (*PROTOCOL, "--batch-size", "128")
SUBSET = ("--subset", "10000", "--epochs", "20")
NORM_BATCHES = (2, 4, 8, 16, 32)
NESTEROV_COSINE = ("--nesterov", "--schedule", "cosine")
GROUPS = ("devices", "full", "drivers", "head", "paper160")


@dataclass(frozen=True)
class Run:
    group: str  # devices | full | drivers
    path: str  # relative to OUT: <experiment>/<norm>/seed<k>, as `proxynorm compare` lays out
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # environment variables of the run's process


def _run(group: str, experiment: str, norm: str, seed: int, *args: str, name: str = "") -> Run:
    path = f"{experiment}/{name or norm}/seed{seed}"
    env = (("PROXYNORM_CPP", "1"),) if group == "paper160" else ()
    return Run(group, path, ("--norm", norm, "--seed", str(seed), *args), env)


def runs() -> list[Run]:
    """Every run, in the order the workers take them."""
    devices = {
        s: [
            _run("devices", f"devices/nb{k}", "bn", s, *SUBSET, "--norm-batch", str(k))
            for k in NORM_BATCHES
        ]
        for s in (0, 1)
    }
    full = {
        (n, s): _run("full", "full50k", n, s, "--epochs", "30")
        for n in ("bn", "gn+pn", "gn")
        for s in (0, 1)
    }
    drivers = [
        *[
            _run("drivers", f"drivers/groups{g}", "gn+pn", 0, *SUBSET, "--groups", str(g))
            for g in (2, 4, 16)
        ],
        _run("drivers", "drivers/no_proxy_affine", "gn+pn", 0, *SUBSET, "--no-proxy-affine"),
        *[
            _run("drivers", "drivers/wd5e-4", n, 0, *SUBSET, "--weight-decay", "5e-4")
            for n in ("gn+pn", "bn")
        ],
        *[
            _run("drivers", "drivers/nesterov_cosine", n, s, *SUBSET, *NESTEROV_COSINE)
            for s in (0, 1)  # seed 1: seed 0 moved GN+PN by +4.7 pp, beyond seed noise
            for n in ("gn+pn", "bn")
        ],
    ]
    head = [_run("head", "full50k-head", "gn+pn", s, "--epochs", "30") for s in (0, 1)]
    paper = {
        (n, s): _run("paper160", "paper160", n, s) for n in ("bn", "gn", "gn+pn") for s in (0, 1, 2)
    }
    paper["bn-nb2", 0] = _run("paper160", "paper160", "bn", 0, "--norm-batch", "2", name="bn-nb2")
    pairs = [("bn", 0), ("gn+pn", 0), ("gn", 0), ("gn+pn", 1), ("bn", 1), ("gn", 1), ("bn-nb2", 0)]
    return [
        *head,
        *[paper[k] for k in (*pairs, ("gn+pn", 2))],
        full["bn", 0],
        *devices[0],
        full["gn+pn", 0],
        *devices[1],
        full["bn", 1],
        full["gn+pn", 1],
        *drivers,
        full["gn", 0],
    ]


def command(run: Run, data: str) -> list[str]:
    # Later flags win in argparse, so a run's own --groups / --epochs override COMMON's.
    return [
        sys.executable,
        "-m",
        "proxynorm.cli",
        "train",
        "--resume",
        "--out",
        str(OUT / run.path),
        *COMMON,
        "--data-dir",
        data,
        *run.args,
    ]


def work(queue: list[Run], data: str, worker: int) -> list[tuple[str, int]]:
    """Take unclaimed runs from ``queue`` until none is left; return (path, exit code) pairs."""
    done = []
    for run in queue:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **dict(run.env)}
        out = OUT / run.path
        if (out / "final.json").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        claim = out / ".claim"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue  # another worker has it
        os.write(fd, f"{os.getpid()} worker {worker}\n".encode())
        os.close(fd)
        log = out / "train.log"
        print(f"[worker {worker}] {time.strftime('%H:%M:%S')} start {run.path}", flush=True)
        with open(log, "a") as f:
            rc = subprocess.call(
                command(run, data), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
            )
        claim.unlink(missing_ok=True)
        print(f"[worker {worker}] {time.strftime('%H:%M:%S')} end {run.path} rc={rc}", flush=True)
        done.append((run.path, rc))
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="devices,full,drivers", help=f"comma-separated: {GROUPS}")
    p.add_argument("--workers", type=int, default=2, help="parallel 1-thread runs")
    p.add_argument("--data-dir", default=DATA, help=f"CIFAR-10 JPEG zip (default {DATA})")
    p.add_argument("--list", action="store_true", help="print the runs and their state, then exit")
    p.add_argument("--reclaim", action="store_true", help="ignore claims left by dead workers")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        p.error(f"unknown group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}")
    queue = [r for r in runs() if r.group in groups]
    if args.list:
        for r in queue:
            out = OUT / r.path
            state = (
                "finished"
                if (out / "final.json").exists()
                else "claimed"
                if (out / ".claim").exists()
                else "partial"
                if (out / "metrics.jsonl").exists()
                else "todo"
            )
            print(f"{state:9s} {r.path:38s} {' '.join(r.args)}")
        return 0
    if args.reclaim:  # before any worker starts: a worker never removes another's claim
        for r in queue:
            (OUT / r.path / ".claim").unlink(missing_ok=True)
    with ThreadPoolExecutor(args.workers) as pool:
        results = [pool.submit(work, queue, args.data_dir, w) for w in range(args.workers)]
        failed = [(p, rc) for f in results for p, rc in f.result() if rc]
    for path, rc in failed:
        print(f"FAILED (exit {rc}): {path}; see {OUT / path / 'train.log'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
