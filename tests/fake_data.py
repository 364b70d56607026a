"""Tiny data sets in the real on-disk formats (IDX, CIFAR pickles, STL-10 binaries, CelebA's
JPEGs and text files)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from lit_bioplaus.data.celeba import ATTRIBUTES

IDX_FILES = {
    "train-images-idx3-ubyte": (True, "images"),
    "train-labels-idx1-ubyte": (True, "labels"),
    "t10k-images-idx3-ubyte": (False, "images"),
    "t10k-labels-idx1-ubyte": (False, "labels"),
}
N_TRAIN, N_TEST = 40, 12
CIFAR10_FILES = {**{f"data_batch_{i}": 8 for i in range(1, 6)}, "test_batch": N_TEST}


def fake_split(n: int, shape: tuple[int, ...], num_classes: int, seed: int):
    """``n`` random uint8 images of ``shape`` and int64 labels below ``num_classes``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return images, rng.integers(0, num_classes, size=n).astype(np.int64)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    data = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist(folder: Path, suffix: str) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """The four MNIST IDX files in ``folder``; returns ``{train: (images, labels)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        True: fake_split(N_TRAIN, (28, 28), 10, 0),
        False: fake_split(N_TEST, (28, 28), 10, 1),
    }
    for name, (train, kind) in IDX_FILES.items():
        images, labels = splits[train]
        write_idx(folder / f"{name}{suffix}", images if kind == "images" else labels)
    return splits


def write_cifar(folder: Path, files: dict[str, int], label_key: bytes, num_classes: int):
    """CIFAR pickles named as ``files`` keys holding that many images; returns them."""
    folder.mkdir(parents=True)
    written = {}
    for seed, (name, n) in enumerate(files.items()):
        images, labels = fake_split(n, (3, 32, 32), num_classes, seed)
        batch = {b"data": images.reshape(n, -1), label_key: labels.tolist(), b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))  # the official files' array encoding
        written[name] = images, labels
    return written


def write_stl10(folder: Path, n_train: int = 6, n_test: int = 4, n_unlabeled: int = 5):
    """STL-10 binaries (images column-major, labels 1..10); returns the row-major images."""
    folder.mkdir(parents=True)
    written = {}
    sizes = {"train": n_train, "test": n_test, "unlabeled": n_unlabeled}
    for seed, (split, n) in enumerate(sizes.items()):
        images, labels = fake_split(n, (3, 96, 96), 10, seed)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        if split != "unlabeled":
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        written[split] = images, labels
    return written


PARTITION = [0, 1, 0, 2, 0, 0, 1, 2, 0, 1, 2, 0]
"""Split code of each fake image, interleaved (6 train, 3 val, 3 test)."""


def write_celeba(root: Path, n: int = len(PARTITION), seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``root/celeba`` in torchvision's layout: ``n`` random 218x178 JPEGs, the attribute
    file (values ±1, padded as the real file) and the partition file. Returns the image
    names and the ``(n, 40)`` ±1 values."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        pixels = rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=90)
    values = rng.choice([-1, 1], size=(n, len(ATTRIBUTES)))
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values, strict=True)]
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    codes = PARTITION[:n]
    (folder / "list_eval_partition.txt").write_text("".join(f"{m} {c}\n" for m, c in zip(names, codes, strict=True)))
    return names, values


def write_all(root: Path) -> Path:
    """Every supported data set, tiny, in torchvision's layout under ``root``."""
    write_mnist(root / "MNIST" / "raw", ".gz")
    write_mnist(root / "FashionMNIST" / "raw", "")
    write_cifar(root / "cifar-10-batches-py", CIFAR10_FILES, b"labels", 10)
    write_cifar(root / "cifar-100-python", {"train": N_TRAIN, "test": N_TEST}, b"fine_labels", 100)
    write_stl10(root / "stl10_binary")
    write_celeba(root)
    return root
