"""A fixed batch of inputs for analysis: CIFAR-10 images when available, else synthetic ones."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from proxynorm.data.image_folder import ImageFolder, class_balanced_indices
from proxynorm.data.transforms import normalize


def synthetic_images(n: int, size: int = 32, seed: int = 0) -> Tensor:
    """Smooth random images with per-image mean and contrast: a stand-in for natural images
    (spatially correlated, with instance variability), float32 (n, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, size // 4, size // 4, generator=gen)
    x = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    x = x + 0.3 * torch.randn(n, 3, size, size, generator=gen)
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
    return x * (0.5 + torch.rand(n, 1, 1, 1, generator=gen)) + 0.5 * torch.randn(
        n, 3, 1, 1, generator=gen
    )


def probe_batch(
    data: str | Path | None, n: int = 128, seed: int = 0, split: str = "test"
) -> tuple[Tensor, str]:
    """``n`` class-balanced, standardized images from an image-folder tree or zip at ``data``;
    synthetic images (:func:`synthetic_images`) when ``data`` is None or missing.

    Returns:
        ``(inputs, note)`` where ``note`` says where the inputs came from.
    """
    if data is not None and Path(data).exists():
        folder = ImageFolder(data, split)
        x, _ = folder.load(class_balanced_indices(folder.labels, n, seed), size=32)
        return normalize(x), f"{n} class-balanced '{split}' images from {data}"
    where = f" ({data} not found)" if data is not None else ""
    return synthetic_images(n, seed=seed), (
        f"SYNTHETIC inputs{where}: {n} smooth random 32x32 images, not CIFAR-10; "
        "pass --data ../shared/data/cifar10-jpeg.zip for real images"
    )
