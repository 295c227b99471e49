"""Batch loaders whose order and augmentation depend only on (seed, epoch), so that a resumed run
sees exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from proxynorm.data.datasets import ArrayDataset
from proxynorm.data.image_folder import ImageFolder
from proxynorm.data.transforms import cifar_augment, random_resized_crop, resize_center_crop


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling and augmentation."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def num_batches(n: int, batch_size: int, train: bool) -> int:
    """Batches per epoch: training drops the last partial batch, evaluation keeps it."""
    return n // batch_size if train else -(-n // batch_size)


class ArrayLoader:
    """Batches of an in-memory uint8 data set, shuffled and augmented per epoch.

    Args:
        data: the split.
        batch_size: images per batch.
        train: shuffle, augment (``augment="cifar"``) and drop the last partial batch.
        seed: with :meth:`set_epoch`, fixes the order and augmentation of each epoch.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        train: bool,
        seed: int = 0,
        augment: str | None = "cifar",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if train and len(data) < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {len(data)} training images")
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.augment = augment if train else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return num_batches(len(self.data), self.batch_size, self.train)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = epoch_generator(self.seed, self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.data.images[idx]
            if self.augment == "cifar":
                x = cifar_augment(x, gen)
            yield x, self.data.labels[idx]


class FolderDataset(Dataset):
    """Large-image folders (ImageNet) decoded on the fly in worker processes.

    Training: random-resized crop + flip; evaluation: resize + center crop. Returns uint8
    (3, size, size) tensors. Per-sample randomness derives from (seed, epoch, index).
    """

    def __init__(self, folder: ImageFolder, size: int, train: bool, seed: int = 0) -> None:
        self.folder, self.size, self.train, self.seed = folder, size, train, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        name, label = self.folder.samples[i]
        img = self.folder.open(name)
        if self.train:
            gen = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 10**8 + i)
            img = random_resized_crop(img, self.size, gen)
        else:
            img = resize_center_crop(img, self.size)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return x.view(self.size, self.size, 3).permute(2, 0, 1), label


class FolderLoader:
    """The :class:`ArrayLoader` interface (``set_epoch``, iteration, ``len``) over a
    :class:`FolderDataset`, decoding in ``workers`` processes."""

    def __init__(self, dataset: FolderDataset, batch_size: int, workers: int = 0) -> None:
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.train = dataset.train

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.train)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from folder_loader(self.dataset, self.batch_size, self.dataset.epoch, self.workers)


def folder_loader(dataset: FolderDataset, batch_size: int, epoch: int, workers: int) -> DataLoader:
    """A DataLoader over ``dataset`` for one epoch (shuffled by (seed, epoch) when training)."""
    dataset.epoch = epoch
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=dataset.train,
        drop_last=dataset.train,
        num_workers=workers,
        generator=epoch_generator(dataset.seed, epoch),
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
