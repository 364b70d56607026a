"""Readers for the on-disk formats of the data sets.

* IDX (MNIST, Fashion-MNIST), gzip-compressed or not: :func:`read_idx`.
* CIFAR-10 / CIFAR-100 "python version" pickles: :func:`read_cifar`.
* STL-10 binaries: :func:`read_stl10_images`, :func:`read_stl10_labels`.

Every reader returns numpy arrays and raises ``ValueError`` naming the file when it
does not hold what the format promises.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
"""IDX type code (third byte of the magic number) -> element dtype (big-endian)."""

CIFAR_IMAGE_SHAPE = (3, 32, 32)
STL10_IMAGE_SHAPE = (3, 96, 96)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, the format of MNIST and Fashion-MNIST, gzip-compressed or not.

    An IDX file is a magic number (two zero bytes, a type code from :data:`IDX_DTYPES`,
    the number of dimensions ``d``), ``d`` big-endian uint32 sizes, then the data in C
    order. Compression is recognised by the gzip magic bytes, not by the file name.

    Returns:
        The array, of the stored shape (e.g. ``(N, 28, 28)`` uint8 images or ``(N,)``
        uint8 labels), in native byte order.

    Raises:
        ValueError: the file is not a well-formed IDX file.
    """
    path = Path(path)
    with path.open("rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as f:
            magic = f.read(4)
            if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES:
                raise ValueError(f"{path}: not an IDX file (magic number 0x{magic.hex()})")
            shape = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
            array = np.empty(shape, dtype=IDX_DTYPES[magic[2]])
            n_read = f.readinto(memoryview(array).cast("B"))
            trailing = f.read(1)
    except (OSError, EOFError, zlib.error, struct.error) as err:
        raise ValueError(f"{path}: corrupt IDX file ({err})") from err
    if n_read != array.nbytes or trailing:
        raise ValueError(
            f"{path}: corrupt IDX file (header says shape {shape}, data is {'longer' if trailing else 'shorter'})"
        )
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def read_cifar(paths: Sequence[str | Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR "python version" batch files.

    Each file is a pickled dict holding ``b"data"``, ``(N, 3072)`` uint8 rows (the
    1024 red, then green, then blue values of a row-major 32x32 image), and the labels
    under ``label_key`` (``b"labels"`` for CIFAR-10, ``b"fine_labels"`` for CIFAR-100).

    Returns:
        Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.

    Raises:
        ValueError: a file is not such a pickle.
    """
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            target = np.asarray(batch[label_key], dtype=np.int64)
        except Exception as err:  # unpickling a damaged file can raise almost anything
            raise ValueError(f"{path}: not a CIFAR batch file ({err!r})") from err
        if data.shape != (len(target), np.prod(CIFAR_IMAGE_SHAPE)):
            raise ValueError(
                f"{path}: expected {len(target)} rows of {np.prod(CIFAR_IMAGE_SHAPE)} bytes, "
                f"got data of shape {data.shape}"
            )
        images.append(data.reshape(-1, *CIFAR_IMAGE_SHAPE))
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


def read_stl10_images(path: str | Path) -> np.ndarray:
    """Read an STL-10 image file (``train_X.bin``, ``test_X.bin``, ``unlabeled_X.bin``).

    The file is raw uint8, each image stored channel by channel, each channel
    column-major. It is memory-mapped, so the only copy made is the transposed result
    (2.8 GB for the 100,000 unlabeled images).

    Returns:
        Images ``(N, 3, 96, 96)`` uint8, ``(H, W)`` row-major.

    Raises:
        ValueError: the file size is not a positive multiple of one image.
    """
    path = Path(path)
    image_bytes = int(np.prod(STL10_IMAGE_SHAPE))
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {image_bytes}-byte images")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, *STL10_IMAGE_SHAPE)
    return np.ascontiguousarray(raw.transpose(0, 1, 3, 2))


def read_stl10_labels(path: str | Path) -> np.ndarray:
    """Read an STL-10 label file (``train_y.bin``, ``test_y.bin``): one uint8 per image, 1..10.

    Returns:
        Labels ``(N,)`` int64, 0..9.
    """
    return np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
