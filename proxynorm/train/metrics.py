"""Per-epoch metrics as JSON lines, kept consistent with the last checkpoint on resume; the
accuracy of a model on batches held in memory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from proxynorm.files import atomic_target


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def truncate_jsonl(path: str | Path, max_epoch: int) -> None:
    """Keep only records with ``epoch <= max_epoch`` (e.g. those the checkpoint covers)."""
    records = [r for r in read_jsonl(path) if r.get("epoch", math.inf) <= max_epoch]
    with atomic_target(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def accuracy(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy in percent of ``model`` in eval mode over ``(images, labels)`` batches."""
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * hits / sum(len(y) for _, y in batches)
