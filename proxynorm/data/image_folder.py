"""Image-folder trees (``<split>/<class>/<image>``), read from a directory or directly from a zip.

This is the layout of ImageNet and of ``../shared/data/cifar10-jpeg.zip``; labels are the class
folder names in sorted order.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


class ImageFolder:
    """The images of one split of an image-folder tree, in a directory or a zip.

    Args:
        root: a directory or a ``.zip`` file holding ``<split>/<class>/<image>`` entries.
        split: e.g. ``"train"``, ``"test"`` or ``"val"``.

    Attributes:
        classes: sorted class names.  samples: ``(entry, label)`` pairs, sorted by entry.

    Raises:
        FileNotFoundError: ``root`` does not exist.  ValueError: no images for ``split``.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.exists():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self._zip = zipfile.is_zipfile(self.root)
        if self.root.is_file() and not self._zip:
            raise ValueError(
                f"{self.root} is not a readable zip archive (truncated or corrupt?); expected a "
                "zip or a directory of <split>/<class>/<image>"
            )
        entries = self._list_entries()
        prefix = f"{split}/"
        pairs = []
        for name in entries:
            parts = name[len(prefix) :].split("/") if name.startswith(prefix) else []
            if len(parts) == 2 and parts[1].lower().endswith(IMAGE_SUFFIXES):
                pairs.append((name, parts[0]))
        if not pairs:
            raise ValueError(f"no images under '{split}/<class>/' in {self.root}")
        self.classes = sorted({c for _, c in pairs})
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = sorted((name, index[c]) for name, c in pairs)

    def _list_entries(self) -> list[str]:
        if self._zip:
            with zipfile.ZipFile(self.root) as zf:
                return zf.namelist()
        return [p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_handle", None)
        state.pop("_handle_pid", None)
        return state

    def _read(self, name: str) -> bytes:
        if not self._zip:
            return (self.root / name).read_bytes()
        # One open ZipFile per process (worker processes must not share the parent's handle).
        if getattr(self, "_handle_pid", None) != os.getpid():
            self._handle = zipfile.ZipFile(self.root)
            self._handle_pid = os.getpid()
        return self._handle.read(name)

    def open(self, name: str) -> Image.Image:
        """Decode one entry to an RGB image.

        Raises:
            ValueError: unreadable or corrupt; the message names the entry and the root.
        """
        try:
            return Image.open(io.BytesIO(self._read(name))).convert("RGB")
        except Exception as err:  # PIL and zipfile raise several types for corrupt files
            raise ValueError(f"cannot read image {name} in {self.root}: {err}") from err

    def load(
        self, indices: list[int], size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``indices`` into a uint8 tensor (n, 3, H, W) and int64 labels.

        Args:
            size: resize every image to ``size`` x ``size`` (needed when sizes differ).

        Raises:
            ValueError: an unreadable or corrupt image; the message names the entry and root.
        """
        images = []
        for i in indices:
            img = self.open(self.samples[i][0])
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor([self.samples[i][1] for i in indices], dtype=torch.long)
        return x, y


def class_balanced_indices(labels: list[int], n: int, seed: int = 0) -> list[int]:
    """``n`` indices with (as near as possible) the same count per class, drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    classes = sorted(by_class)
    chosen = []
    for k, c in enumerate(classes):
        want = n // len(classes) + (1 if k < n % len(classes) else 0)
        members = by_class[c]
        perm = torch.randperm(len(members), generator=gen)[:want]
        chosen += [members[j] for j in perm.tolist()]
    return sorted(chosen)
