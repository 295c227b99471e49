"""The benchmark harness: what every benchmark of this project times with, so that numbers are
comparable. Each variant is timed in interleaved rounds (one call of each per round, in a new
seeded random order, after warm-up) and reported as the median over rounds, or as the median of
per-round ratios to a baseline in the same process; saved-for-backward memory is counted with
:func:`torch.autograd.graph.saved_tensors_hooks`, each storage once.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from proxynorm.layers import ProxyNormAct


def set_fused(module: nn.Module, fused: bool) -> nn.Module:
    """Switch every :class:`ProxyNormAct` in ``module`` to the fused or the reference path."""
    for m in module.modules():
        if isinstance(m, ProxyNormAct):
            m.fused = fused
    return module


def saved_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs forward
    (parameters included; each storage counted once)."""
    seen: dict[tuple[int, str], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


@dataclass
class Variant:
    """One thing to time: ``step()`` runs forward + backward once."""

    name: str
    step: Callable[[], Any]
    forward: Callable[[], Tensor]


CPU = torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(variants: list[Variant], repeats: int, warmup: int, desc: str, device=CPU) -> dict:
    """Warm-up calls, then ``repeats`` interleaved rounds: one call of each variant per round, in
    a new (seeded) random order each, since a variant timed right after another pays for the state
    that one leaves (a fixed order made the same code 3-4 % slower in one place than in another).
    On a GPU the clock is read after synchronizing, so it measures the work, not its launch."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    order, rng = list(variants), random.Random(0)
    for _ in tqdm(range(repeats), desc=desc, leave=False, disable=None):
        rng.shuffle(order)
        for v in order:
            sync(device)
            t0 = time.perf_counter()
            v.step()
            sync(device)
            times[v.name].append(time.perf_counter() - t0)
    return times


def median_ratio(times: list[float], base: list[float]) -> float:
    """The median over rounds of a variant's time over the baseline's in the same round (robust
    to the machine slowing down or speeding up between rounds)."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def write_script_json(path: Path, settings: dict[str, Any], rows: dict[str, Any]) -> None:
    """A benchmark script's raw numbers at ``path``: ``{"settings": ..., "rows": rows}``, the
    settings (paths as strings) with the thread count and torch version added."""
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
    meta |= {"threads": torch.get_num_threads(), "torch": torch.__version__}
    path.write_text(json.dumps({"settings": meta, "rows": rows}, indent=1) + "\n")


def fresh_compile_caches(variants: int) -> None:
    """Empty dynamo's caches before compiling ``variants`` models whose forward code is the same.

    Each compiles that code once more, and past dynamo's recompile limit (8 by default) a
    variant would quietly run eager; the limit is raised to fit them all, and (torch >= 2.5)
    hitting it anyway fails instead. Both are dynamo's process-wide settings.
    """
    torch._dynamo.reset()
    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, 2 * variants)
    if hasattr(cfg, "fail_on_cache_limit_hit"):
        cfg.fail_on_cache_limit_hit = True


def peak_mib(v: Variant, device: torch.device) -> float | None:
    """Peak memory of one training step on a CUDA device (``max_memory_allocated``)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    v.step()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20
