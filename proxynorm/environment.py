"""What a result was produced with: library and PyTorch versions, source commit, machine.

Saved beside benchmark tables (``bench.json``) and training results (``final.json``) so that a
number can be traced to the code and machine that produced it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from proxynorm.layers.pn import cpp
from proxynorm.version import __version__


def source_commit() -> str | None:
    """The git commit of the checkout ``proxynorm`` is imported from, with ``+dirty`` when
    tracked files differ from it; ``None`` outside a git checkout (e.g. an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # a directory, or a file in a git worktree
        return None
    try:
        run = dict(cwd=root, capture_output=True, text=True, timeout=10, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The vector instruction set PyTorch's CPU kernels dispatch to ("AVX512", "AVX2", ...).

    Recorded because it changes results: the same code, seed and thread count give other float32
    bits on an AVX512 and an AVX2 machine (convolution and reduction kernels round differently),
    so two training runs on different machines part from the first step like two seeds.
    ``ATEN_CPU_CAPABILITY=avx2`` makes an AVX512 machine compute an AVX2 machine's bits.
    """
    return torch.backends.cpu.get_cpu_capability()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions, source commit, thread count and machine of this process."""
    return {
        "proxynorm": __version__,
        "commit": source_commit(),
        "torch": torch.__version__,
        # decodes the JPEG datasets: another libjpeg can give other pixels
        "pillow": _version("pillow"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # whether GN+PN steps may run on the opt-in C++ kernel (its float32 rounding differs)
        "pn_cpp_kernel": cpp.in_use(),
    }
