"""Per-epoch metrics as JSON lines, kept consistent with the last checkpoint on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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
