"""The concrete DataModules and the registry of them by name."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.datasets
from sklearn.datasets import load_digits
from torch import Tensor

from lit_bioplaus.data.base import DEFAULT_DATA_DIR, VisionDataModule, split_indices
from lit_bioplaus.data.datasets import (
    check_label_count,
    check_labels,
    read_cifar,
    read_idx,
    read_stl10_images,
    read_stl10_labels,
)


class Digits(VisionDataModule):
    """scikit-learn's bundled 8x8 handwritten digits: 1,797 images, nothing to download.

    Pixel values 0..16 are scaled to 0..255. A fixed 20% of the images (seed 0,
    whatever ``seed`` is) form the test split; ``seed`` splits the rest into train
    and validation sets (1,294 / 144 with the default ``val_fraction``). ``data_dir``
    and ``download`` are ignored.
    """

    name = "scikit-learn digits"
    num_classes = 10
    classes = tuple(str(d) for d in range(10))
    input_shape = (1, 8, 8)
    mean = (0.3053,)
    std = (0.3759,)
    test_fraction: ClassVar[float] = 0.2
    test_seed: ClassVar[int] = 0

    def prepare_data(self) -> None:
        """Nothing to prepare: the digits ship with scikit-learn."""

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        digits = load_digits()
        images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
        kept, held_out = split_indices(len(images), self.test_fraction, self.test_seed)
        index = kept if train else held_out
        return torch.from_numpy(images).unsqueeze(1)[index], torch.from_numpy(digits.target)[index]


class MNIST(VisionDataModule):
    """MNIST handwritten digits: 60,000 training and 10,000 test images, 28x28 grey.

    Reads the four IDX files, gzip-compressed or not, from torchvision's layout
    (``<data_dir>/MNIST/raw/``) or straight from ``data_dir``.
    """

    name = "MNIST"
    num_classes = 10
    classes = tuple(str(d) for d in range(10))
    input_shape = (1, 28, 28)
    mean = (0.1307,)
    std = (0.3081,)
    train_files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test_files = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    file_suffixes = ("", ".gz")
    subfolders = ("MNIST/raw", ".")
    url = "https://yann.lecun.com/exdb/mnist/"
    torchvision_dataset = torchvision.datasets.MNIST

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        images_path, labels_path = self.split_paths(train)
        images = read_idx(images_path, item_shape=type(self).input_shape[1:], dtype=np.uint8)
        labels = read_idx(labels_path, item_shape=(), dtype=np.uint8)
        check_label_count(labels_path, labels, images_path, len(images))
        check_labels(labels_path, labels, self.num_classes)
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


class FashionMNIST(MNIST):
    """Fashion-MNIST, Zalando's clothing images in MNIST's format: 60,000 training and
    10,000 test images, 28x28 grey, 10 classes.

    Reads the four IDX files from torchvision's layout (``<data_dir>/FashionMNIST/raw/``)
    or straight from ``data_dir``. With ``data_dir=None`` it looks first in
    ``/usr/share/datasets/fashion-mnist``, where the Debian package
    ``dataset-fashion-mnist`` installs them.
    """

    name = "Fashion-MNIST"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    mean = (0.2860,)
    std = (0.3530,)
    subfolders = ("FashionMNIST/raw", ".")
    default_data_dirs = ("/usr/share/datasets/fashion-mnist", DEFAULT_DATA_DIR)
    url = "https://github.com/zalandoresearch/fashion-mnist"
    download_hints = ("`apt-get install dataset-fashion-mnist` (Debian / Ubuntu)",)
    torchvision_dataset = torchvision.datasets.FashionMNIST


class CIFAR10(VisionDataModule):
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32 colour, 10 classes.

    Reads torchvision's layout: the pickled batches in ``<data_dir>/cifar-10-batches-py/``.
    """

    name = "CIFAR-10"
    num_classes = 10
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    input_shape = (3, 32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    subfolders = ("cifar-10-batches-py",)
    url = "https://www.cs.toronto.edu/~kriz/cifar.html"
    torchvision_dataset = torchvision.datasets.CIFAR10
    label_key: ClassVar[bytes] = b"labels"

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels = read_cifar(self.split_paths(train), self.label_key, self.num_classes)
        return torch.from_numpy(images), torch.from_numpy(labels)


class CIFAR100(CIFAR10):
    """CIFAR-100: 50,000 training and 10,000 test images, 32x32 colour, 100 fine classes.

    Reads torchvision's layout: ``<data_dir>/cifar-100-python/train`` and ``test``.
    """

    name = "CIFAR-100"
    num_classes = 100
    classes = tuple(
        [
            "apple",
            "aquarium_fish",
            "baby",
            "bear",
            "beaver",
            "bed",
            "bee",
            "beetle",
            "bicycle",
            "bottle",
            "bowl",
            "boy",
            "bridge",
            "bus",
            "butterfly",
            "camel",
            "can",
            "castle",
            "caterpillar",
            "cattle",
            "chair",
            "chimpanzee",
            "clock",
            "cloud",
            "cockroach",
            "couch",
            "crab",
            "crocodile",
            "cup",
            "dinosaur",
            "dolphin",
            "elephant",
            "flatfish",
            "forest",
            "fox",
            "girl",
            "hamster",
            "house",
            "kangaroo",
            "keyboard",
            "lamp",
            "lawn_mower",
            "leopard",
            "lion",
            "lizard",
            "lobster",
            "man",
            "maple_tree",
            "motorcycle",
            "mountain",
            "mouse",
            "mushroom",
            "oak_tree",
            "orange",
            "orchid",
            "otter",
            "palm_tree",
            "pear",
            "pickup_truck",
            "pine_tree",
            "plain",
            "plate",
            "poppy",
            "porcupine",
            "possum",
            "rabbit",
            "raccoon",
            "ray",
            "road",
            "rocket",
            "rose",
            "sea",
            "seal",
            "shark",
            "shrew",
            "skunk",
            "skyscraper",
            "snail",
            "snake",
            "spider",
            "squirrel",
            "streetcar",
            "sunflower",
            "sweet_pepper",
            "table",
            "tank",
            "telephone",
            "television",
            "tiger",
            "tractor",
            "train",
            "trout",
            "tulip",
            "turtle",
            "wardrobe",
            "whale",
            "willow_tree",
            "wolf",
            "woman",
            "worm",
        ]
    )
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    train_files = ("train",)
    test_files = ("test",)
    subfolders = ("cifar-100-python",)
    torchvision_dataset = torchvision.datasets.CIFAR100
    label_key = b"fine_labels"


class STL10(VisionDataModule):
    """STL-10: 5,000 labeled training, 8,000 test and 100,000 unlabeled images, 96x96
    colour, 10 classes.

    Reads torchvision's layout: the binaries in ``<data_dir>/stl10_binary/``.

    Args:
        unlabeled: train (and validate) on the 100,000 unlabeled images, labelled ``-1``
            (2.8 GB in memory), e.g. for autoencoders; the test split stays labeled.
        **kwargs: the arguments of :class:`VisionDataModule`.
    """

    name = "STL-10"
    num_classes = 10
    classes = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
    input_shape = (3, 96, 96)
    mean = (0.4467, 0.4398, 0.4066)
    std = (0.2603, 0.2566, 0.2713)
    train_files = ("train_X.bin", "train_y.bin")
    test_files = ("test_X.bin", "test_y.bin")
    subfolders = ("stl10_binary",)
    url = "https://cs.stanford.edu/~acoates/stl10/"
    torchvision_dataset = torchvision.datasets.STL10

    def __init__(self, *, unlabeled: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unlabeled = unlabeled
        if unlabeled:
            self.train_files = ("unlabeled_X.bin",)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        images_path, *labels_path = self.split_paths(train)
        images = torch.from_numpy(read_stl10_images(images_path))
        if not labels_path:  # the unlabeled set
            return images, torch.full((len(images),), -1)
        labels = read_stl10_labels(labels_path[0])
        check_label_count(labels_path[0], labels, images_path, len(images))
        return images, torch.from_numpy(labels)


DATAMODULES: dict[str, type[VisionDataModule]] = {
    "digits": Digits,
    "mnist": MNIST,
    "fashion_mnist": FashionMNIST,
    "cifar10": CIFAR10,
    "cifar100": CIFAR100,
    "stl10": STL10,
}
"""DataModule classes by lowercase name."""


def datamodule_class(name: str, context: str = "") -> type[VisionDataModule]:
    """The DataModule class registered as ``name`` (case-insensitive, ``-`` read as ``_``).

    Raises:
        ValueError: ``name`` is not in :data:`DATAMODULES` (the message adds ``context``,
            e.g. which option named it).
    """
    key = name.lower().replace("-", "_")
    if key not in DATAMODULES:
        raise ValueError(f"unknown data set {name!r}{context}; choose one of {', '.join(DATAMODULES)}")
    return DATAMODULES[key]


def get_datamodule(name: str, **kwargs: Any) -> VisionDataModule:
    """Instantiate the DataModule registered as ``name`` (see ``datamodule_class``) with
    ``kwargs``."""
    return datamodule_class(name)(**kwargs)
