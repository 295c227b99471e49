import zipfile

import pytest
import torch

from proxynorm.data import ImageFolder, class_balanced_indices, load_small_images
from tests.fake_data import png_bytes, write_image_folder_zip


def test_zip_and_directory_trees(tmp_path):
    path = write_image_folder_zip(tmp_path / "d.zip", n_train=3, n_test=2)
    folder = ImageFolder(path, "train")
    assert folder.classes == ["cat", "dog"] and len(folder) == 6
    x, y = folder.load([0, 5])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == [0, 1]
    tree = tmp_path / "tree"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tree)
    folder_dir = ImageFolder(tree, "test")
    assert folder_dir.classes == ["cat", "dog"] and len(folder_dir) == 4
    assert torch.equal(folder_dir.load([1])[0], ImageFolder(path, "test").load([1])[0])


def test_corrupt_entry_fails_naming_the_file(tmp_path):
    path = write_image_folder_zip(tmp_path / "d.zip", corrupt="train/dog/0005.png")
    folder = ImageFolder(path, "train")
    with pytest.raises(ValueError, match="train/dog/0005.png"):
        folder.load(list(range(len(folder))))


def test_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "nope.zip", "train")
    path = write_image_folder_zip(tmp_path / "d.zip")
    with pytest.raises(ValueError, match="no images under 'val/"):
        ImageFolder(path, "val")


def test_load_small_images_from_zip_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYNORM_CACHE", str(tmp_path / "cache"))
    path = write_image_folder_zip(tmp_path / "d.zip", n_train=5, n_test=3)
    train, test, num_classes = load_small_images("cifar10", path)
    assert (len(train), len(test), num_classes) == (10, 6, 2)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    train2, _, _ = load_small_images("cifar10", path)
    assert torch.equal(train.images, train2.images) and torch.equal(train.labels, train2.labels)


def test_concurrent_first_decodes_do_not_collide(tmp_path, monkeypatch):
    # Two runs started together both find no cache and both write it (seen with the evidence
    # runner's two workers): each must write its own temporary file and both must succeed.
    import threading

    import numpy as np

    from proxynorm.data.datasets import decode_cached

    monkeypatch.setenv("PROXYNORM_CACHE", str(tmp_path / "cache"))
    folder = ImageFolder(write_image_folder_zip(tmp_path / "d.zip", n_train=4, n_test=2), "train")
    both_writing = threading.Barrier(2, timeout=30)
    savez = np.savez

    def savez_together(*args, **kwargs):
        both_writing.wait()
        savez(*args, **kwargs)
        both_writing.wait()  # both have written their file before either renames it

    monkeypatch.setattr(np, "savez", savez_together)
    results, errors = [], []

    def decode():
        try:
            results.append(decode_cached(folder, 8))
        except Exception as err:  # noqa: BLE001 -- reported below
            errors.append(err)

    threads = [threading.Thread(target=decode) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        next((tmp_path / "cache").glob("d-train-8px-*.npz")).name
    ]  # one cache file, no temporary left behind
    assert torch.equal(decode_cached(folder, 8).images, results[0].images)


def test_different_sizes_are_resized(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train/a/0.png", png_bytes(torch.zeros(3, 40, 50, dtype=torch.uint8).numpy()))
        zf.writestr("test/a/0.png", png_bytes(torch.zeros(3, 32, 32, dtype=torch.uint8).numpy()))
    x, _ = ImageFolder(path, "train").load([0], size=32)
    assert x.shape == (1, 3, 32, 32)


def test_class_balanced_indices():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    idx = class_balanced_indices(labels, 30, seed=1)
    counts = [sum(labels[i] == c for i in idx) for c in range(3)]
    assert counts == [10, 10, 10] and len(set(idx)) == 30
    assert idx == class_balanced_indices(labels, 30, seed=1)
    assert idx != class_balanced_indices(labels, 30, seed=2)


def test_truncated_zip_is_reported_as_corrupt(tmp_path):
    full = write_image_folder_zip(tmp_path / "d.zip")
    data = full.read_bytes()
    (tmp_path / "t.zip").write_bytes(data[:-30])
    assert not zipfile.is_zipfile(tmp_path / "t.zip")
    with pytest.raises(ValueError, match="not a readable zip archive"):
        ImageFolder(tmp_path / "t.zip", "train")
