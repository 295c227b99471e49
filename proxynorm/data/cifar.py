"""CIFAR-10 and CIFAR-100 in the official python format, downloaded with checksum verification.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009. On disk:
``cifar-10-batches-py/{data_batch_1..5, test_batch}`` and ``cifar-100-python/{train, test}``,
pickled dicts of uint8 ``data`` (N, 3072) and ``labels`` / ``fine_labels``. They are read with a
restricted unpickler that only admits the numpy types those files contain.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class CifarArchive:
    archive: str
    folder: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int


ARCHIVES = {
    "cifar10": CifarArchive(
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
    ),
    "cifar100": CifarArchive(
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ("train",),
        ("test",),
        b"fine_labels",
        100,
    ),
}
#: Where the official archives are published (their maintainers' site).
BASE_URL = "https://www.cs.toronto.edu/~kriz/"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, md5: str) -> Path:
    """Download ``url`` to ``dest`` (via a temporary file) and verify its MD5.

    Raises:
        ValueError: the checksum does not match (the file is removed).
        OSError: the download failed (e.g. no network).
    """
    dest = Path(dest)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            for p in created:  # leave no empty directory behind (innermost first)
                if p.exists() and not any(p.iterdir()):
                    p.rmdir()
            raise
    got = md5sum(tmp.name)
    if got != md5:
        Path(tmp.name).unlink(missing_ok=True)
        raise ValueError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
    Path(tmp.name).replace(dest)
    return dest


def _extract(archive: Path, root: Path) -> None:
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(root, filter="data")  # refuses links and paths outside root
        except TypeError:  # Python < 3.10.12 has no filter; check members by hand
            for member in tar.getmembers():
                target = (root / member.name).resolve()
                if not target.is_relative_to(root.resolve()) or member.issym() or member.islnk():
                    raise ValueError(f"unsafe entry {member.name} in {archive}") from None
            tar.extractall(root)


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read CIFAR batch {path}: {err}") from err
    if len(data) != len(labels):
        raise ValueError(
            f"cannot read CIFAR batch {path}: {len(data)} images, {len(labels)} labels"
        )
    return data, labels


def load_cifar(
    name: str, root: str | Path, download_missing: bool = True, url: str | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load ``"cifar10"`` or ``"cifar100"`` from ``root`` (downloading when missing and allowed).

    Returns:
        ``{"train": (x, y), "test": (x, y)}`` with uint8 images (N, 3, 32, 32) and int64 labels.

    Raises:
        FileNotFoundError: the data is missing and ``download_missing`` is false.
        ValueError: a corrupt batch file or a checksum mismatch.
    """
    spec = ARCHIVES[name]
    root = Path(root)
    folder = root / spec.folder
    if not folder.is_dir():
        if not download_missing:
            raise FileNotFoundError(f"{name} not found: expected {folder}")
        archive = root / spec.archive
        if not archive.exists() or md5sum(archive) != spec.md5:
            source = url or BASE_URL + spec.archive
            try:
                download(source, archive, spec.md5)
            except OSError as err:  # URLError, timeouts, no network
                reason = getattr(err, "reason", err)
                raise FileNotFoundError(
                    f"{name} not found: expected {folder} (or an image-folder zip as --data-dir), "
                    f"and downloading {source} failed: {reason}"
                ) from None
        _extract(archive, root)
    splits = {}
    for split, files in (("train", spec.train_files), ("test", spec.test_files)):
        parts = [_read_batch(folder / f, spec.label_key) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        splits[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return splits
