"""Data-parallel training under torchrun: 2 CPU processes with gloo on loopback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from proxynorm.train.metrics import read_jsonl
from tests.fake_data import write_cifar10

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
ROOT = Path(__file__).resolve().parents[2]
RUN_FILES = {"checkpoint.pt", "config.json", "final.json", "history.jsonl", "metrics.jsonl"}


def command(args: list[str], nproc: int, module: str = "proxynorm.cli") -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", module, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    target = ["-m", module] if module else []
    return [*launcher, f"--nproc_per_node={nproc}", *target, *args]


def environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run(args: list[str], nproc: int, cwd: Path, module: str = "proxynorm.cli"):
    result = subprocess.run(
        command(args, nproc, module),
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def train_args(data: Path, out: Path, norm: str, *extra: str) -> list[str]:
    return [
        "train",
        "--model=resnet20",
        "--width-mult=0.25",
        f"--data-dir={data}",
        "--no-download",
        "--subset=48",
        "--global-batch=16",
        "--epochs=1",
        "--device=cpu",
        f"--norm={norm}",
        f"--out={out}",
        *extra,
    ]


def relative_difference(run_a: Path, run_b: Path, buffers: bool = True) -> float:
    """Largest |a - b| / max|a| over the float tensors of two runs' final weights (and buffers:
    BN's running statistics)."""
    a = torch.load(run_a / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(run_b / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    if not buffers:
        a = {k: v for k, v in a.items() if "running_" not in k}
    return max(
        (
            (a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp(min=1e-12)
        ).item()
        for k in a
        if a[k].is_floating_point()
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def test_two_processes_match_one_for_a_batch_independent_norm(data, tmp_path):
    run(train_args(data, tmp_path / "one", "gn+pn"), 1, tmp_path)
    two = run(train_args(data, tmp_path / "two", "gn+pn"), 2, tmp_path)
    assert "batch 16 = 2 processes x 8" in two.stdout
    assert two.stdout.count("epoch 1/1") == 1  # only rank 0 prints
    # 3 steps of 16 images: equal up to float32 summation order.
    assert relative_difference(tmp_path / "one", tmp_path / "two") < 1e-4
    metrics = [read_jsonl(tmp_path / r / "metrics.jsonl")[0] for r in ("one", "two")]
    assert metrics[0]["train_acc"] == metrics[1]["train_acc"]
    assert metrics[0]["test_acc"] == metrics[1]["test_acc"]


def test_bn_depends_on_the_split_unless_synchronized(data, tmp_path):
    run(train_args(data, tmp_path / "one", "bn"), 1, tmp_path)
    run(train_args(data, tmp_path / "two", "bn"), 2, tmp_path)
    run(train_args(data, tmp_path / "sync", "bn", "--sync-bn"), 2, tmp_path)
    assert relative_difference(tmp_path / "one", tmp_path / "two") > 1e-2
    assert relative_difference(tmp_path / "one", tmp_path / "sync") < 1e-4


def test_bn_ghost_batches_that_divide_the_process_batch_do_not_depend_on_the_split(data, tmp_path):
    run(train_args(data, tmp_path / "one", "bn", "--norm-batch=8"), 1, tmp_path)
    run(train_args(data, tmp_path / "two", "bn", "--norm-batch=8"), 2, tmp_path)
    # Same weights; the running statistics are rank 0's (its ghost batches only).
    assert relative_difference(tmp_path / "one", tmp_path / "two", buffers=False) < 1e-4
    assert relative_difference(tmp_path / "one", tmp_path / "two") > 1e-3


def test_sync_bn_warns_for_batch_independent_specs(data, tmp_path):
    with pytest.warns(UserWarning, match="no effect on 'gn'"):
        from proxynorm.train import build_config, train

        cfg = build_config(
            "cifar",
            model="resnet20",
            width_mult=0.25,
            data_dir=str(data),
            download=False,
            subset=16,
            epochs=1,
            batch_size=16,
            norm="gn",
            sync_bn=True,
            device="cpu",
        )
        train(cfg, tmp_path / "run")


WORKER = """
import os, sys
from proxynorm.train import build_config, train
cfg = build_config("cifar", model="resnet20", width_mult=0.25, data_dir=sys.argv[1],
                   download=False, subset=48, global_batch=16, epochs=2, device="cpu",
                   norm="gn+pn", probe=8)
rank = os.environ["RANK"]
final = train(cfg, os.path.join(sys.argv[2], "rank" + rank))
# One write per line: with PYTHONUNBUFFERED, print's separate writes of each argument let the
# two ranks' lines interleave on the shared stdout ("rankrank 1 final ..."), a flaky failure.
sys.stdout.write(f"rank {rank} final {final['test_acc']} {final['world_size']}\\n")
sys.stdout.flush()
"""


def test_only_rank_0_writes_files(data, tmp_path):
    """Each rank is given its own directory: rank 1's must stay empty."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = run([str(script), str(data), str(tmp_path / "out")], 2, cwd, module="")
    assert {p.name for p in (tmp_path / "out" / "rank0").iterdir()} == RUN_FILES
    assert not (tmp_path / "out" / "rank1").exists()
    assert list(cwd.iterdir()) == []
    acc = json.loads((tmp_path / "out" / "rank0" / "final.json").read_text())["test_acc"]
    assert f"rank 0 final {acc} 2" in result.stdout and f"rank 1 final {acc} 2" in result.stdout


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun worker ``rank`` among the children of ``parent`` (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers in /proc")
def test_killed_rank_fails_fast_and_the_run_resumes(data, tmp_path):
    out = tmp_path / "run"
    args = train_args(data, out, "gn+pn", "--epochs=6", "--subset=96")
    proc = subprocess.Popen(
        command(args, 2),
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not read_jsonl(out / "metrics.jsonl") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert time.monotonic() - killed < 60
    assert "SIGKILL" in output and "rank      : 1" in output
    assert not (out / "final.json").exists()
    done = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 6

    resumed = run([*args, "--resume"], 2, tmp_path)
    assert f"resuming {out} after epoch {done}" in resumed.stdout
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 7))
    assert json.loads((out / "final.json").read_text())["world_size"] == 2


def test_compare_under_torchrun_writes_one_summary(data, tmp_path):
    args = train_args(data, tmp_path / "cmp", "gn+pn")
    args = ["compare", "--norms=gn+pn,ln", "--seeds=1"] + [
        a for a in args[1:] if "--norm=" not in a
    ]
    result = run(args, 2, tmp_path)
    assert result.stdout.count("| GN+PN |") == 1 and result.stdout.count("| LN |") == 1
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert set(summary["norms"]) == {"gn+pn", "ln"} and not summary["failures"]
    again = run(args, 2, tmp_path)  # rank 0 finds both runs finished; nobody trains
    assert again.stdout.count("finished earlier") == 2 and "epoch 1/1" not in again.stdout
