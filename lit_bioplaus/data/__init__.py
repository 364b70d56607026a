"""Image-classification DataModules that hold whole splits in memory.

``Digits`` needs no download; ``MNIST``, ``FashionMNIST``, ``CIFAR10``, ``CIFAR100`` and
``STL10`` read the files in torchvision's on-disk layout (MNIST-style IDX files also
from a flat folder) and download them when asked with ``download=True``. The guided
(multi-task) ones, ``MultiMNIST`` and ``CelebA`` (40 attributes, served from a
memory-mapped uint8 cache), derive from ``MultiTaskDataModule``.
"""

from lit_bioplaus.data.base import (
    DatasetNotFoundError,
    InMemoryImageDataset,
    VisionDataModule,
    collate,
)
from lit_bioplaus.data.celeba import CelebA
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
from lit_bioplaus.data.multi_mnist import MultiMNIST
from lit_bioplaus.data.multi_task import MultiTaskDataModule, MultiTaskImageDataset

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATAMODULES",
    "MNIST",
    "STL10",
    "CelebA",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "Digits",
    "FashionMNIST",
    "ImageFiles",
    "InMemoryImageDataset",
    "MultiMNIST",
    "MultiTaskDataModule",
    "MultiTaskImageDataset",
    "VisionDataModule",
    "collate",
    "get_datamodule",
]
