"""Data: CIFAR-10/100 (official format or image folders), image-folder trees read from a directory
or a zip, augmentations, loaders, and probe batches for analysis."""

from proxynorm.data.batches import labelled_batches
from proxynorm.data.datasets import ArrayDataset, load_small_images
from proxynorm.data.image_folder import ImageFolder, class_balanced_indices
from proxynorm.data.probe import probe_batch
from proxynorm.data.transforms import CIFAR_MEAN, CIFAR_STD, cifar_augment, mix_batch, normalize

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "ArrayDataset",
    "ImageFolder",
    "cifar_augment",
    "class_balanced_indices",
    "labelled_batches",
    "load_small_images",
    "mix_batch",
    "normalize",
    "probe_batch",
]
