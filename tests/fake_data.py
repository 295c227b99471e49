"""Tiny data sets written in the official on-disk formats, for tests."""

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(n_per_class: int, classes: int, seed: int = 0, size: int = 32):
    """Learnable images: each class has its own mean color, plus noise."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(30, 225, size=(classes, 3))
    x, y = [], []
    for c in range(classes):
        base = np.broadcast_to(colors[c].reshape(3, 1, 1), (n_per_class, 3, size, size))
        noise = rng.normal(0, 25, size=(n_per_class, 3, size, size))
        x.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        y += [c] * n_per_class
    return np.concatenate(x), np.array(y)


def write_cifar10(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """``root/cifar-10-batches-py`` with 5 train batches and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y = class_images(n_train, 10, seed=1)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    for i, (xs, ys) in enumerate(zip(np.array_split(x, 5), np.array_split(y, 5), strict=True)):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": xs.reshape(len(xs), -1), b"labels": ys.tolist()}, f)
    xt, yt = class_images(n_test, 10, seed=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": xt.reshape(len(xt), -1), b"labels": yt.tolist()}, f)
    return root


def write_cifar100(root: Path, n: int = 2) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 3), ("test", 4)):
        x, y = class_images(n, 100, seed=seed)
        with open(folder / split, "wb") as f:
            pickle.dump(
                {
                    b"data": x.reshape(len(x), -1),
                    b"fine_labels": y.tolist(),
                    b"coarse_labels": (y // 5).tolist(),
                },
                f,
            )
    return root


def png_bytes(arr, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.transpose(1, 2, 0)).save(buf, format=fmt)
    return buf.getvalue()


def write_image_folder_zip(
    path: Path,
    n_train: int = 4,
    n_test: int = 2,
    classes=("cat", "dog"),
    corrupt: str | None = None,
    fmt: str = "png",
) -> Path:
    """A zip of ``train/<class>/*.<fmt>`` and ``test/<class>/*.<fmt>`` (``png`` or ``jpg``);
    ``corrupt`` names an entry written with garbage bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for split, n, seed in (("train", n_train, 5), ("test", n_test, 6)):
            x, y = class_images(n, len(classes), seed=seed)
            for i, (img, label) in enumerate(zip(x, y, strict=True)):
                name = f"{split}/{classes[label]}/{i:04d}.{fmt}"
                data = png_bytes(img, "JPEG" if fmt == "jpg" else "PNG")
                zf.writestr(name, b"not an image" if name == corrupt else data)
    return path
