import pickle
import tarfile

import pytest
import torch

from proxynorm.data.cifar import ARCHIVES, download, load_cifar, md5sum
from tests.fake_data import write_cifar10, write_cifar100


def test_read_official_cifar10_and_cifar100(tmp_path):
    d10 = load_cifar("cifar10", write_cifar10(tmp_path / "c10"), download_missing=False)
    x, y = d10["train"]
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and sorted(set(y.tolist())) == list(range(10))
    assert d10["test"][0].shape == (100, 3, 32, 32)
    d100 = load_cifar("cifar100", write_cifar100(tmp_path / "c100"), download_missing=False)
    assert d100["train"][0].shape == (200, 3, 32, 32) and d100["train"][1].max() == 99


def test_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar("cifar10", tmp_path, download_missing=False)


def test_corrupt_batch_names_the_file(tmp_path):
    root = write_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar("cifar10", root, download_missing=False)


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    root = write_cifar10(tmp_path)
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": [], b"labels": [], b"x": print}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        load_cifar("cifar10", root, download_missing=False)


def _archive(tmp_path):
    src = write_cifar10(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_verifies_checksum(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    good = md5sum(archive)
    monkeypatch.setitem(
        ARCHIVES,
        "cifar10",
        ARCHIVES["cifar10"].__class__(**{**ARCHIVES["cifar10"].__dict__, "md5": good}),
    )
    data = load_cifar("cifar10", tmp_path / "dl", url=archive.as_uri())
    assert data["train"][0].shape == (200, 3, 32, 32)

    with pytest.raises(ValueError, match="checksum mismatch"):
        download(archive.as_uri(), tmp_path / "bad" / "a.tar.gz", "0" * 32)
    assert not list((tmp_path / "bad").iterdir())  # nothing half-written is left
