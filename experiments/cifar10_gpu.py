"""The paper's CIFAR-10 protocol on one GPU: resnet20, full CIFAR-10 (JPEG), 160 epochs (issue 14).

The `cifar` recipe unscaled (SGD, lr 0.1, batch 128, warmup 5, decays at 80/120 of 160 epochs,
BN over 128 inputs, GN with 8 groups) for bn, gn, gn+pn, ln, ln+pn, one process per run on one
CUDA device, all at once; data decoded once, kept and augmented on the device (the same batches
as on the CPU), bf16 autocast, channels_last, optionally `torch.compile`d. Every run goes
through `proxynorm train --resume` and writes the same `config.json`, `metrics.jsonl`,
`final.json` as the CPU runs (`experiments/results/cifar10_gpu/<norm>/seed<k>/`).

It is built for a lent GPU machine (see DEVELOPERS.md): one command of at most 10 minutes that
receives only the repository and what is carried with it (at most 64 MiB; `../shared` is not
there) and returns at most 8 files. So:

1. here, once: pack the JPEG zip (62 MiB) into `experiments/gpu_data/cifar10-jpeg.pack.npz`
   (git-ignored, ~17 MiB): every CIFAR JPEG shares one 623-byte header, so it is stored once and
   each file is its entropy-coded scan alone; the files are rebuilt byte for byte (CRC-checked).

       python experiments/cifar10_gpu.py pack

2. on the GPU machine, one command (`run` stops its runs at `--budget` seconds, each keeping its
   last finished epoch, and writes everything into one archive):

       python3 experiments/cifar10_gpu.py run --budget 520 --archive $OUT/cifar10_gpu.tar.gz

   with `carry: ["experiments/gpu_data"]` plus, to resume, the `checkpoint.pt` of each unfinished
   run under `experiments/results/cifar10_gpu/` (ignored by git: carry them by path).

3. here: unpack what came back, commit the JSON (and report):

       python experiments/cifar10_gpu.py collect /work/.device/.../cifar10_gpu.tar.gz

`run` also works on the CPU at tiny settings (the suite's smoke test): every argument it does not
know goes to `proxynorm train`, e.g. `--device cpu --subset 200 --epochs 1 --width-mult 0.25`.
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ZIP = Path("../shared/data/cifar10-jpeg.zip")
PACK = Path("experiments/gpu_data/cifar10-jpeg.pack.npz")
DATA = Path("experiments/gpu_data/cifar10-jpeg.zip")  # rebuilt from PACK on the GPU machine
RESULTS = Path("experiments/results/cifar10_gpu")
NORMS = "bn,gn,gn+pn,ln,ln+pn"
#: The paper's protocol: the cifar recipe as it is (160 epochs, batch 128, BN over 128 inputs).
PROTOCOL = (
    "--model",
    "resnet20",
    "--data",
    "cifar10",
    "--recipe",
    "cifar",
    "--groups",
    "8",
    "--channels-last",
    "--probe",
    "128",
)


# --- pack / unpack: JPEG files without their shared headers ----------------------------------


def split_jpeg(data: bytes) -> tuple[bytes, bytes]:
    """``(header, scan)``: everything up to the end of the start-of-scan segment, and the rest.
    A file without a start-of-scan marker (not a baseline JPEG) is all scan."""
    i = data.find(b"\xff\xda")
    if not data.startswith(b"\xff\xd8") or i < 0:
        return b"", data
    end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return data[:end], data[end:]


def pack(zip_path: Path, out: Path) -> dict:
    """Pack every file of ``zip_path`` into one ``.npz``: the distinct headers once, each file's
    scan, its header index, name and CRC-32. Returns sizes for the log."""
    headers: dict[bytes, int] = {}
    names, crcs, which, scans = [], [], [], []
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            data = zf.read(info)
            header, scan = split_jpeg(data)
            which.append(headers.setdefault(header, len(headers)))
            names.append(info.filename)
            crcs.append(info.CRC)
            scans.append(scan)
    offsets = np.cumsum([0] + [len(s) for s in scans], dtype=np.int64)
    head_offsets = np.cumsum([0] + [len(h) for h in headers], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(
        tmp,
        scans=np.frombuffer(b"".join(scans), dtype=np.uint8),
        offsets=offsets,
        headers=np.frombuffer(b"".join(headers), dtype=np.uint8),
        header_offsets=head_offsets,
        header_index=np.asarray(which, dtype=np.int32),
        crc=np.asarray(crcs, dtype=np.uint32),
        names=np.frombuffer("\n".join(names).encode(), dtype=np.uint8),
    )
    tmp.replace(out)
    return {"files": len(names), "headers": len(headers), "bytes": out.stat().st_size}


def unpack(pack_path: Path, zip_path: Path) -> int:
    """Rebuild the zip (stored, uncompressed) from a pack; every file's CRC-32 is checked.

    Raises:
        ValueError: a rebuilt file differs from the original (corrupt or truncated pack).
    """
    with np.load(pack_path) as f:
        scans, offsets = f["scans"].tobytes(), f["offsets"]
        heads, head_offsets = f["headers"].tobytes(), f["header_offsets"]
        which, crcs = f["header_index"], f["crc"]
        names = f["names"].tobytes().decode().split("\n")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(names):
            h = which[i]
            data = heads[head_offsets[h] : head_offsets[h + 1]] + scans[offsets[i] : offsets[i + 1]]
            if binascii.crc32(data) != int(crcs[i]):
                raise ValueError(f"{pack_path}: {name} does not match its CRC (corrupt pack?)")
            zf.writestr(name, data)
    tmp.replace(zip_path)
    return len(names)


# --- run: one process per norm, stopped at the time budget -------------------------------------


def run_dir(results: Path, norm: str, seed: int) -> Path:
    return results / norm / f"seed{seed}"


def train_command(norm: str, seed: int, results: Path, data: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxynorm.cli",
        "train",
        "--resume",
        "--out",
        str(run_dir(results, norm, seed)),
        *PROTOCOL,
        "--data-dir",
        str(data),
        "--norm",
        norm,
        "--seed",
        str(seed),
        *extra,
    ]


def supervise(
    commands: dict[str, list[str]], logs: dict[str, Path], budget: float, env: dict[str, str]
) -> dict[str, dict]:
    """Start every command at once, wait until all end or ``budget`` seconds pass, then stop the
    rest (SIGINT, then SIGKILL after 20 s). Returns ``{name: {"rc", "seconds", "stopped"}}``;
    a stopped run keeps the checkpoint of its last finished epoch."""
    t0 = time.monotonic()
    procs = {}
    for name, cmd in commands.items():
        logs[name].parent.mkdir(parents=True, exist_ok=True)
        with open(logs[name], "a") as log:
            procs[name] = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
    ended: dict[str, dict] = {}
    stopped = False
    while len(ended) < len(procs):
        for name, p in procs.items():
            if name not in ended and p.poll() is not None:
                ended[name] = {
                    "rc": p.returncode,
                    "seconds": time.monotonic() - t0,
                    "stopped": stopped,
                }
        if not stopped and time.monotonic() - t0 > budget:
            stopped = True
            for name, p in procs.items():
                if name not in ended:
                    os.killpg(p.pid, signal.SIGINT)
            grace = time.monotonic() + 20
        if stopped and time.monotonic() > grace:
            for name, p in procs.items():
                if name not in ended and p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        time.sleep(0.2)
    return ended


def prepare_data(args: argparse.Namespace, env: dict[str, str]) -> None:
    """Rebuild the zip from the pack (when the zip is missing), then decode it once into the
    cache that every run reads (so the runs do not all decode at once)."""
    data = ROOT / args.data_dir
    if not data.exists():
        pack_path = ROOT / args.pack
        if not pack_path.exists():
            raise SystemExit(f"neither {data} nor {pack_path} exists: run `pack` first")
        n = unpack(pack_path, data)
        print(f"rebuilt {data} ({n} files) from {pack_path}", flush=True)
    code = (
        "import sys; from proxynorm.data import load_small_images; "
        "load_small_images('cifar10', sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(data)], cwd=ROOT, env=env, check=True)


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    t0 = time.monotonic()
    results = ROOT / args.results
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    env.setdefault("PROXYNORM_CACHE", str(ROOT / "experiments" / "gpu_data" / "cache"))
    env.setdefault("OMP_NUM_THREADS", "1")
    prepare_data(args, env)
    device = ["--device", args.device, "--amp", args.amp, "--compile", args.compile]
    norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    todo = {
        n: train_command(n, args.seed, results, Path(args.data_dir), [*device, *extra])
        for n in norms
        if not (run_dir(results, n, args.seed) / "final.json").exists()
    }
    logs = {n: run_dir(results, n, args.seed) / "train.log" for n in norms}
    budget = args.budget - (time.monotonic() - t0)
    ended = supervise(todo, logs, budget, env) if todo else {}
    # A compiled run that failed on its own (not stopped) gets one eager retry in the time left.
    # (The last of repeated flags wins, so appending --compile off overrides the earlier one.)
    retry = {
        n: [*c, "--compile", "off"]
        for n, c in todo.items()
        if ended[n]["rc"] and not ended[n]["stopped"] and args.compile != "off"
    }
    left = args.budget - (time.monotonic() - t0)
    if retry and left > 60:
        print(f"retrying without compile: {sorted(retry)}", flush=True)
        for n, info in supervise(retry, logs, left, env).items():
            ended[n] = {**info, "retried_eager": True}
    summary = {
        "device": _device_name(env),
        "budget_s": args.budget,
        "wall_s": time.monotonic() - t0,
        "runs": {
            n: {
                **ended.get(n, {"rc": 0, "seconds": 0.0, "stopped": False}),
                **_progress(run_dir(results, n, args.seed)),
            }
            for n in norms
        },
    }
    (results / "runner.json").parent.mkdir(parents=True, exist_ok=True)
    (results / "runner.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if args.archive:
        write_archive(results, Path(args.archive))
        print(f"wrote {args.archive}")
    return 1 if any(r["rc"] and not r["stopped"] for r in summary["runs"].values()) else 0


def _progress(path: Path) -> dict:
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    last = json.loads(lines[-1]) if lines else {}
    return {
        "epochs_done": last.get("epoch", 0),
        "test_acc": last.get("test_acc"),
        "finished": (path / "final.json").exists(),
    }


def _device_name(env: dict[str, str]) -> str:
    code = (
        "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def write_archive(results: Path, archive: Path) -> None:
    """One ``.tar.gz`` of ``results`` (JSON, logs, checkpoints), paths relative to it."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(results.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(results)))


def cmd_collect(args: argparse.Namespace) -> int:
    """Extract an archive from `run` into the results folder (nothing outside it)."""
    results = (ROOT / args.results).resolve()
    with tarfile.open(args.archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = (results / m.name).resolve()
            if not m.isfile() or not target.is_relative_to(results):
                raise SystemExit(f"refusing archive member {m.name!r}: outside {args.results}")
        for m in members:
            target = results / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(m).read())
    print(f"extracted {len(members)} files into {args.results}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    info = pack(Path(args.zip), ROOT / args.pack)
    mib = info["bytes"] / 2**20
    print(
        f"packed {info['files']} files ({info['headers']} distinct headers) into "
        f"{args.pack}: {mib:.1f} MiB"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("pack", help="pack the JPEG zip for the GPU machine")
    q.add_argument("--zip", default=str(ZIP), help=f"CIFAR-10 JPEG zip (default {ZIP})")
    q.add_argument("--pack", default=str(PACK), help=f"output (default {PACK})")
    q = sub.add_parser("run", help="train the runs (unknown options go to `proxynorm train`)")
    q.add_argument("--norms", default=NORMS, help=f"comma-separated (default {NORMS})")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--budget",
        type=float,
        default=520.0,
        help="seconds before unfinished runs are stopped (default 520)",
    )
    q.add_argument("--device", default="cuda")
    q.add_argument("--amp", default="bf16", help="bf16 (default), fp16 or off")
    q.add_argument(
        "--compile",
        default="default",
        help="torch.compile mode: default, reduce-overhead, ..., or off; a compiled "
        "run that fails is retried eagerly (default: default)",
    )
    q.add_argument("--pack", default=str(PACK))
    q.add_argument("--data-dir", default=str(DATA), help="the rebuilt zip (relative to the repo)")
    q.add_argument("--results", default=str(RESULTS))
    q.add_argument("--archive", help="write the results folder into this .tar.gz")
    q = sub.add_parser("collect", help="extract a `run` archive into the results folder")
    q.add_argument("archive")
    q.add_argument("--results", default=str(RESULTS))
    args, extra = p.parse_known_args(argv)
    if args.command != "run" and extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "pack":
        return cmd_pack(args)
    if args.command == "collect":
        return cmd_collect(args)
    return cmd_run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
