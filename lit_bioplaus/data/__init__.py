"""Image-classification DataModules that hold whole splits in memory.

``Digits`` needs no download; ``MNIST``, ``FashionMNIST``, ``CIFAR10``, ``CIFAR100`` and
``STL10`` read the files in torchvision's on-disk layout (MNIST-style IDX files also
from a flat folder) and download them when asked with ``download=True``.
"""

from lit_bioplaus.data.base import (
    DatasetNotFoundError,
    InMemoryImageDataset,
    VisionDataModule,
    collate,
)
from lit_bioplaus.data.datasets import DatasetCorruptError
from lit_bioplaus.data.image_files import ImageFiles
from lit_bioplaus.data.modules import (
    CIFAR10,
    CIFAR100,
    DATAMODULES,
    MNIST,
    STL10,
    Digits,
    FashionMNIST,
    get_datamodule,
)
from lit_bioplaus.data.multi_mnist import MultiMNIST, MultiTaskImageDataset

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATAMODULES",
    "MNIST",
    "STL10",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "ImageFiles",
    "InMemoryImageDataset",
    "MultiMNIST",
    "MultiTaskImageDataset",
    "VisionDataModule",
    "collate",
    "get_datamodule",
]
