"""Atomic file writes shared by checkpoints, caches, metrics and reports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_target(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary path beside ``path``, renamed onto it when the block succeeds.

    The temporary name is unique (``mkstemp``), so concurrent writers of the same file (two runs
    decoding one data cache) never collide: each renames a complete file and the last one wins.
    Readers see the old file or a whole new one, never half a file; on an exception the temporary
    file is removed and ``path`` is left as it was. ``suffix`` ends the temporary name (e.g.
    ``".tmp.npz"``, since ``np.savez`` appends ``.npz`` to any other name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def refuse_overwrite(path: str | Path, force: bool) -> None:
    """Raise ``FileExistsError`` when ``path`` exists, unless ``force``."""
    if Path(path).exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
