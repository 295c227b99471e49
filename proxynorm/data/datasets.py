"""Image-classification data sets by name: CIFAR-10/100 (official format or image folders, kept in
memory as uint8) and generic image-folder trees such as ImageNet (decoded on the fly)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from proxynorm.data.cifar import ARCHIVES, load_cifar
from proxynorm.data.image_folder import ImageFolder
from proxynorm.files import atomic_target

DATASETS = ("cifar10", "cifar100", "imagefolder")


@dataclass
class ArrayDataset:
    """A split held in memory: uint8 images (N, 3, H, W) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: list[int]) -> ArrayDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx])

    def only_classes(self, classes: list[int]) -> ArrayDataset:
        """The images of ``classes``, relabelled ``0 .. len(classes) - 1`` in the order given
        (a source or target task of a transfer study, e.g. CIFAR-10 classes 0-4).

        Raises:
            ValueError: ``classes`` empty, repeated, or naming a label the split lacks.
        """
        present = set(self.labels.unique().tolist())
        if not classes or len(set(classes)) != len(classes) or not set(classes) <= present:
            raise ValueError(f"classes={classes}: must be distinct labels of the data set, "
                             f"which has {sorted(present)}")  # fmt: skip
        lookup = torch.full((max(present) + 1,), -1, dtype=torch.long)
        lookup[torch.as_tensor(classes)] = torch.arange(len(classes))
        keep = lookup[self.labels] >= 0
        return ArrayDataset(self.images[keep], lookup[self.labels[keep]])


def cache_dir() -> Path:
    """``$PROXYNORM_CACHE``, else ``~/.cache/proxynorm``."""
    return Path(os.environ.get("PROXYNORM_CACHE", Path.home() / ".cache" / "proxynorm"))


def decode_cached(folder: ImageFolder, size: int, chunk: int = 2000) -> ArrayDataset:
    """All images of ``folder`` resized to ``size``, decoded once and cached as uint8 ``.npz``
    (keyed by the source's path, size and modification time)."""
    stat = folder.root.stat()
    key = f"{folder.root.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{folder.split}|{size}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    path = cache_dir() / f"{folder.root.stem}-{folder.split}-{size}px-{digest}.npz"
    if path.exists():
        with np.load(path) as f:
            return ArrayDataset(torch.from_numpy(f["x"]), torch.from_numpy(f["y"]))
    xs, ys = [], []
    for start in tqdm(range(0, len(folder), chunk), desc=f"decoding {folder.split}", disable=None):
        x, y = folder.load(list(range(start, min(start + chunk, len(folder)))), size=size)
        xs.append(x)
        ys.append(y)
    data = ArrayDataset(torch.cat(xs), torch.cat(ys))
    with atomic_target(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, x=data.images.numpy(), y=data.labels.numpy())
    return data


def _folder_splits(root: Path) -> tuple[ImageFolder, ImageFolder]:
    test_split = "test"
    if root.is_dir() and not (root / "test").is_dir() and (root / "val").is_dir():
        test_split = "val"
    try:
        return ImageFolder(root, "train"), ImageFolder(root, test_split)
    except ValueError:
        if test_split == "test":
            return ImageFolder(root, "train"), ImageFolder(root, "val")
        raise


def is_image_folder(root: str | Path) -> bool:
    """A zip file, or a directory with a ``train/`` folder."""
    root = Path(root)
    return root.suffix == ".zip" or (root / "train").is_dir()


def load_small_images(
    name: str, data_dir: str | Path, download: bool = True, size: int = 32
) -> tuple[ArrayDataset, ArrayDataset, int]:
    """Train and test splits of CIFAR-10/100 (or any small-image folder tree), in memory.

    ``data_dir`` may hold the official python format (downloaded there when missing and the
    network allows), or be an image-folder tree / zip (``train/<class>/*``, ``test|val/<class>/*``),
    decoded once into a uint8 cache.

    Returns:
        ``(train, test, num_classes)``.
    """
    root = Path(data_dir)
    if is_image_folder(root):
        train_folder, test_folder = _folder_splits(root)
        if train_folder.classes != test_folder.classes:
            raise ValueError(f"train and test classes differ in {root}")
        return (
            decode_cached(train_folder, size),
            decode_cached(test_folder, size),
            len(train_folder.classes),
        )
    if name not in ARCHIVES:
        raise ValueError(f"{root} is not an image folder (train/<class>/...) or a zip of one")
    splits = load_cifar(name, root, download_missing=download)
    return ArrayDataset(*splits["train"]), ArrayDataset(*splits["test"]), ARCHIVES[name].num_classes
