"""Processes and devices: data-parallel training on PyTorch's own engine.

``torchrun --nproc_per_node=K`` starts K processes and sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; :func:`setup` joins the process group (NCCL on CUDA, gloo on CPU) and picks the
device, and the loop wraps the model in :class:`torch.nn.parallel.DistributedDataParallel`.
Without those variables everything here is a no-op for a single process.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> Dist:
    """The job's layout from torchrun's environment variables (one process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return Dist(rank, world, local)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (this process's GPU, ``cuda:LOCAL_RANK``) or ``auto``."""
    if name not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but CUDA is not available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device: str, timeout_s: float = 600.0) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun (once per process) and pick the device.

    A collective that waits longer than ``timeout_s`` for a peer (a killed or hung rank) raises
    instead of hanging forever.
    """
    d = from_env()
    dev = resolve_device(device, d.local_rank)
    if d.enabled and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        # Library callers of train() may never call shutdown(); a process group left alive at
        # interpreter exit can abort the process (gloo: "terminate called without an active
        # exception", exit code -6) after a successful run.
        atexit.register(shutdown)
    return d, dev


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across(values: list[float], device: torch.device) -> list[float]:
    """Elementwise sums over all processes (float64; the values themselves for one process)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (pickled; CPU tensors inside stay CPU tensors)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
