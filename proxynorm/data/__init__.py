"""Data: image-folder trees read from a directory or a zip, and probe batches for analysis."""

from proxynorm.data.image_folder import ImageFolder
from proxynorm.data.probe import CIFAR_MEAN, CIFAR_STD, probe_batch

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "ImageFolder", "probe_batch"]
