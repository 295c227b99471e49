"""The GPU runner of the paper's CIFAR-10 protocol (experiments/cifar10_gpu.py), on the CPU at
tiny settings: packing, the time budget, and one end-to-end call whose runs write the same
per-run JSON as the CPU experiments."""

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fake_data import write_image_folder_zip

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "cifar10_gpu.py"


def _runner():
    spec = importlib.util.spec_from_file_location("cifar10_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_rebuilds_every_file_byte_for_byte_and_stores_shared_headers_once(tmp_path):
    g = _runner()
    src = write_image_folder_zip(tmp_path / "d.zip", n_train=6, n_test=3, fmt="jpg")
    info = g.pack(src, tmp_path / "d.pack.npz")
    assert info["files"] == 18 and info["headers"] == 1  # same encoder, same size: one header
    n = g.unpack(tmp_path / "d.pack.npz", tmp_path / "rebuilt.zip")
    a, b = zipfile.ZipFile(src), zipfile.ZipFile(tmp_path / "rebuilt.zip")
    assert n == 18 and a.namelist() == b.namelist()
    assert all(a.read(name) == b.read(name) for name in a.namelist())
    assert sum(i.file_size for i in a.infolist()) > info["bytes"]  # headers stored once


def test_pack_keeps_non_jpeg_files_and_detects_corruption(tmp_path):
    g = _runner()
    src = write_image_folder_zip(tmp_path / "d.zip", n_train=2, n_test=1)  # PNG: no JPEG header
    g.pack(src, tmp_path / "p.npz")
    g.unpack(tmp_path / "p.npz", tmp_path / "r.zip")
    a, b = zipfile.ZipFile(src), zipfile.ZipFile(tmp_path / "r.zip")
    assert all(a.read(name) == b.read(name) for name in a.namelist())
    import numpy as np

    with np.load(tmp_path / "p.npz") as f:
        parts = dict(f)
    parts["scans"] = parts["scans"].copy()
    parts["scans"][5] ^= 0xFF
    np.savez(tmp_path / "bad.npz", **parts)
    with pytest.raises(ValueError, match="CRC"):
        g.unpack(tmp_path / "bad.npz", tmp_path / "bad.zip")


def test_supervise_stops_runs_at_the_budget_and_keeps_finished_ones(tmp_path):
    g = _runner()
    commands = {
        "quick": [sys.executable, "-c", "print('done')"],
        "slow": [sys.executable, "-c", "import time; time.sleep(120)"],
    }
    logs = {k: tmp_path / f"{k}.log" for k in commands}
    ended = g.supervise(commands, logs, budget=3.0, env=None)
    assert ended["quick"] == {**ended["quick"], "rc": 0, "stopped": False}
    assert ended["slow"]["stopped"] and ended["slow"]["rc"] != 0
    assert ended["slow"]["seconds"] < 60
    assert "done" in logs["quick"].read_text()


@pytest.mark.slow
def test_run_on_cpu_writes_the_cpu_runs_json_and_one_archive(tmp_path):
    src = write_image_folder_zip(tmp_path / "d.zip", n_train=16, n_test=4, fmt="jpg")
    subprocess.run(
        [sys.executable, str(SCRIPT), "pack", "--zip", str(src), "--pack", str(tmp_path / "p.npz")],
        check=True,
    )
    archive = tmp_path / "out" / "cifar10_gpu.tar.gz"
    results = tmp_path / "results"
    run = [
        sys.executable, str(SCRIPT), "run", "--norms", "bn,gn+pn", "--device", "cpu",
        "--amp", "off", "--compile", "off", "--budget", "300",
        "--pack", str(tmp_path / "p.npz"), "--data-dir", str(tmp_path / "rebuilt.zip"),
        "--results", str(results), "--archive", str(archive),
        # unknown to the runner: passed to `proxynorm train`
        "--epochs", "1", "--batch-size", "8", "--width-mult", "0.25", "--probe", "8",
        "--groups", "2",
    ]  # fmt: skip
    env = {"PROXYNORM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for norm in ("bn", "gn+pn"):
        d = results / norm / "seed0"
        final = json.loads((d / "final.json").read_text())
        config = json.loads((d / "config.json").read_text())
        assert final["norm"] == norm and final["epochs"] == 1 and final["test_acc"] is not None
        assert config["recipe"] == "cifar" and config["channels_last"] and config["groups"] == 2
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 1
        assert (d / "checkpoint.pt").exists()
    summary = json.loads((results / "runner.json").read_text())
    assert summary["runs"]["gn+pn"]["finished"] and summary["device"] == "cpu"
    # Everything comes back as one archive, which `collect` unpacks elsewhere.
    other = tmp_path / "collected"
    subprocess.run(
        [sys.executable, str(SCRIPT), "collect", str(archive), "--results", str(other)],
        check=True,
    )
    assert json.loads((other / "gn+pn" / "seed0" / "final.json").read_text()) == json.loads(
        (results / "gn+pn" / "seed0" / "final.json").read_text()
    )
    # A second call skips finished runs.
    again = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and json.loads((results / "runner.json").read_text())[
        "runs"
    ]["bn"]["finished"]
