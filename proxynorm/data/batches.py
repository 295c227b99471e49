"""Labelled batches held in memory: the calibration images of ``proxynorm convert`` and the test
split it evaluates on."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from proxynorm.data.datasets import load_small_images
from proxynorm.data.image_folder import ImageFolder, class_balanced_indices
from proxynorm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize


def labelled_batches(
    data: str,
    data_dir: str | Path,
    images: int | None = None,
    train: bool = True,
    image_size: int = 224,
    batch_size: int = 256,
) -> list[tuple[Tensor, Tensor]]:
    """Normalized ``(images, labels)`` batches of a data set's training split (``images``
    class-balanced images, seed 1) or of its whole test split (``train=False``).

    Args:
        data: ``"cifar10"``, ``"cifar100"`` (32×32, CIFAR normalization) or ``"imagefolder"``
            (``train``/``val`` folders, resized to ``image_size``, ImageNet normalization).
        data_dir: where the data is (a directory or a zip).
        images: how many training images (ignored for the test split).
        batch_size: images per batch.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: an unknown ``data``.
    """
    if not Path(data_dir).exists():
        raise FileNotFoundError(f"data directory {data_dir} not found")
    if data in ("cifar10", "cifar100"):
        tr, te, _ = load_small_images(data, data_dir, download=False)
        split = tr if train else te
        idx = class_balanced_indices(split.labels.tolist(), images, 1) if train else None
        x = split.images if idx is None else split.images[idx]
        y = split.labels if idx is None else split.labels[idx]
        return list(zip(normalize(x).split(batch_size), y.split(batch_size), strict=True))
    if data != "imagefolder":
        raise ValueError(f"data must be 'cifar10', 'cifar100' or 'imagefolder', got {data!r}")
    folder = ImageFolder(data_dir, "train" if train else "val")
    idx = class_balanced_indices(folder.labels, images, 1) if train else range(len(folder))
    x, y = folder.load(list(idx), size=image_size)
    x = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
