"""Batch loaders whose order and augmentation depend only on (seed, epoch), so that a resumed run
sees exactly the batches an uninterrupted run would have seen.

In data-parallel training each step's *global* batch of ``batch_size × world_size`` indices is
drawn as a single process would draw it, then cut into contiguous per-rank slices: the union of
the ranks' batches is exactly the one-process batch, whatever the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from proxynorm.data.datasets import ArrayDataset
from proxynorm.data.image_folder import ImageFolder
from proxynorm.data.transforms import cifar_augment, random_resized_crop, resize_center_crop


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling and augmentation."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def num_batches(n: int, batch_size: int, train: bool) -> int:
    """Batches per epoch: training drops the last partial batch, evaluation keeps it."""
    return n // batch_size if train else -(-n // batch_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """Per-rank index batches of each step's global batch, reshuffled every epoch.

    The global batches are consecutive chunks of ``batch_size × world_size`` indices of a
    permutation drawn from ``epoch_generator(seed, epoch)`` (training; the last partial chunk is
    dropped) or of ``0..n-1`` (evaluation; kept). Rank ``r`` gets the slice
    ``[r·batch_size, (r+1)·batch_size)`` of each; evaluation slices that fall past the end are
    skipped, so every example is seen exactly once (no padding, unlike
    :class:`torch.utils.data.DistributedSampler`).

    Args:
        n: data set size.
        batch_size: per-rank batch size.
        train: shuffle and drop the last partial global batch.
        seed: with :meth:`set_epoch`, fixes each epoch's order.
        rank, world_size: this process and the number of processes.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.global_batch = batch_size * world_size
        if train and n < self.global_batch:
            raise ValueError(
                f"the global batch of {self.global_batch} exceeds the {n} training images"
            )
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world_size = rank, world_size
        # This rank's slice of each global batch (empty past the end of an evaluation set).
        self.part = slice(rank * batch_size, (rank + 1) * batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """The global index batches, drawing the permutation from ``generator`` (by default the
        epoch's own)."""
        gen = generator if generator is not None else epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=gen) if self.train else torch.arange(self.n)
        g = self.global_batch
        for b in range(num_batches(self.n, g, self.train)):
            yield order[b * g : (b + 1) * g]

    def __len__(self) -> int:
        if self.train:
            return num_batches(self.n, self.global_batch, True)
        full, rest = divmod(self.n, self.global_batch)
        return full + (rest > self.rank * self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            idx = batch[self.part]
            if len(idx):
                yield idx.tolist()


class ArrayLoader:
    """Batches of an in-memory uint8 data set, shuffled and augmented per epoch.

    With ``world_size > 1`` each step's global batch is augmented as one process would augment
    it and this rank's slice is returned (see :class:`ShardedBatchSampler`).

    Args:
        data: the split.
        batch_size: images per batch (per rank).
        train: shuffle, augment (``augment="cifar"``) and drop the last partial batch.
        seed: with :meth:`set_epoch`, fixes the order and augmentation of each epoch.
        augment: ``"cifar"`` (pad-4 crop and flip) or ``None``.
        rank, world_size: this process and the number of processes.
        device: keep the images and labels on this device (e.g. a GPU: batches are gathered and
            augmented there, with the same random draws as on the CPU); ``None`` leaves them.
    """

    def __init__(
        self,
        data: ArrayDataset,
        batch_size: int,
        train: bool,
        seed: int = 0,
        augment: str | None = "cifar",
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        self.sampler = ShardedBatchSampler(len(data), batch_size, train, seed, rank, world_size)
        if device is not None:
            data = ArrayDataset(data.images.to(device), data.labels.to(device))
        self.data, self.batch_size, self.train = data, batch_size, train
        self.augment = augment if train else None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = epoch_generator(self.sampler.seed, self.sampler.epoch)
        for idx in self.sampler.global_batches(gen):
            part = self.sampler.part
            if self.augment == "cifar":
                # Augment the whole global batch so that the random draws match one process.
                x = cifar_augment(self.data.images[idx], gen)[part]
            else:
                x = self.data.images[idx[part]]
            if len(x):
                yield x, self.data.labels[idx[part]]


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
    :class:`FolderDataset`, decoding in ``workers`` processes; batches come from a
    :class:`ShardedBatchSampler` (per-sample randomness depends on (seed, epoch, index), so a rank's
    images are augmented as one process would augment them)."""

    def __init__(
        self,
        dataset: FolderDataset,
        batch_size: int,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.train = dataset.train
        self.sampler = ShardedBatchSampler(
            len(dataset), batch_size, dataset.train, dataset.seed, rank, world_size
        )

    def set_epoch(self, epoch: int) -> None:
        self.dataset.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        yield from DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
