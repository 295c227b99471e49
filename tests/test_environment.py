import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import proxynorm
import proxynorm.environment
from proxynorm.environment import environment, source_commit


def test_environment_names_versions_and_threads():
    env = environment()
    assert env["proxynorm"] == proxynorm.__version__
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()


def test_source_commit_is_the_checkout_head_or_none():
    root = Path(proxynorm.__file__).resolve().parent.parent
    commit = source_commit()
    if not (root / ".git").exists():
        assert commit is None
        return
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git not available")
    assert commit is not None and commit.removesuffix("+dirty") == head


def test_source_commit_outside_a_checkout_is_none(monkeypatch, tmp_path):
    package = tmp_path / "proxynorm"
    package.mkdir()
    monkeypatch.setattr(proxynorm.environment, "__file__", str(package / "environment.py"))
    assert source_commit() is None


def test_environment_records_the_cpu_and_the_instruction_set_kernels_dispatch_to():
    # Runs on an AVX512 and an AVX2 machine differ from the first step (issue 31): the record
    # must say which one a run used, as PyTorch itself decides it (ATEN_CPU_CAPABILITY included).
    env = environment()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["cpu"], str) and env["cpu"]
    code = "from proxynorm.environment import environment; print(environment()['cpu_capability'])"
    forced = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "ATEN_CPU_CAPABILITY": "default"},
        capture_output=True, text=True, check=True,
    ).stdout.split()[-1]
    assert forced == "DEFAULT"
