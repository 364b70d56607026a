"""Readers for the on-disk formats of the data sets.

* IDX (MNIST, Fashion-MNIST), gzip-compressed or not: :func:`read_idx`.
* CIFAR-10 / CIFAR-100 "python version" pickles: :func:`read_cifar`, which admits
  nothing but numpy arrays and plain containers, so a tampered file cannot run code.
* STL-10 binaries: :func:`read_stl10_images`, :func:`read_stl10_labels`.

Every reader returns numpy arrays and raises :class:`DatasetCorruptError` (a
``ValueError``) naming the file when it does not hold what the format promises.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

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
STL10_NUM_CLASSES = 10

CIFAR_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)
"""The only ``(module, name)`` globals a CIFAR batch pickle refers to: numpy's array
reconstruction (``numpy.core`` before numpy 2, ``numpy._core`` since)."""


class DatasetCorruptError(ValueError):
    """A data file is on disk but does not hold what its format promises: truncated,
    damaged, tampered with, or another file under the expected name.

    Args:
        path: the file.
        problem: what is wrong with it.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(path, problem)
        self.path = Path(path)
        self.problem = problem

    def __str__(self) -> str:
        return (
            f"{self.path}: {self.problem}. Delete it and download the data set again "
            "(`--data.download true`, or `download=True`)"
        )


def read_idx(
    path: str | Path, item_shape: tuple[int, ...] | None = None, dtype: np.dtype | type | None = None
) -> np.ndarray:
    """Read an IDX file, the format of MNIST and Fashion-MNIST, gzip-compressed or not.

    An IDX file is a magic number (two zero bytes, a type code from :data:`IDX_DTYPES`,
    the number of dimensions ``d``), ``d`` big-endian uint32 sizes, then the data in C
    order. Compression is recognised by the gzip magic bytes, not by the file name.

    Args:
        path: the file.
        item_shape: the shape every entry must have (all dimensions but the first),
            e.g. ``(28, 28)`` for images, ``()`` for labels; None accepts any.
        dtype: the element type the file must hold; None accepts any.

    Returns:
        The array, of the stored shape (e.g. ``(N, 28, 28)`` uint8 images or ``(N,)``
        uint8 labels), in native byte order.

    Raises:
        DatasetCorruptError: the file is not a well-formed IDX file, or not of
            ``item_shape`` and ``dtype``.
    """
    path = Path(path)
    with path.open("rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as f:
            stored = _read_idx_stream(path, f)
    except (OSError, EOFError, zlib.error, struct.error) as err:
        raise DatasetCorruptError(path, f"corrupt IDX file ({err})") from err
    array = stored.astype(stored.dtype.newbyteorder("="), copy=False)
    if item_shape is not None and array.shape[1:] != tuple(item_shape):
        expected = ", ".join(["N", *map(str, item_shape)])
        raise DatasetCorruptError(path, f"holds an array of shape {array.shape}, expected ({expected})")
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise DatasetCorruptError(path, f"holds {array.dtype} values, expected {np.dtype(dtype)}")
    return array


def _read_idx_stream(path: Path, f: BinaryIO) -> np.ndarray:
    """The array in the open IDX stream ``f`` of ``path``: header, then exactly the data
    it announces."""
    magic = f.read(4)
    if len(magic) < 4:
        raise DatasetCorruptError(path, f"not an IDX file ({len(magic)} bytes, too short for a header)")
    if magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES:
        raise DatasetCorruptError(path, f"not an IDX file (magic number 0x{magic.hex()})")
    shape = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
    try:
        array = np.empty(shape, dtype=IDX_DTYPES[magic[2]])
    except (MemoryError, ValueError) as err:
        raise DatasetCorruptError(path, f"corrupt IDX file (header says shape {shape}, too large)") from err
    n_read = f.readinto(memoryview(array).cast("B"))
    if n_read != array.nbytes or f.read(1):
        length = "shorter" if n_read != array.nbytes else "longer"
        raise DatasetCorruptError(path, f"corrupt IDX file (header says shape {shape}, data is {length})")
    return array


def check_labels(path: str | Path, labels: np.ndarray, num_classes: int, first: int = 0) -> None:
    """Check that every label read from ``path`` is one of the ``num_classes`` class
    numbers ``first, ..., first + num_classes - 1``.

    Raises:
        DatasetCorruptError: a label is outside that range.
    """
    outside = (labels < first) | (labels >= first + num_classes)
    if outside.any():
        index = np.flatnonzero(outside)[0]
        raise DatasetCorruptError(
            path, f"holds label {labels[index]} (entry {index}); labels must be {first}..{first + num_classes - 1}"
        )


def check_label_count(path: str | Path, labels: np.ndarray, images_path: str | Path, n_images: int) -> None:
    """Check that the label file ``path`` has one label per image of ``images_path``.

    Raises:
        DatasetCorruptError: the counts differ.
    """
    if len(labels) != n_images:
        raise DatasetCorruptError(path, f"holds {len(labels)} labels but {images_path} holds {n_images} images")


class CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only what a CIFAR batch holds: dicts, lists, bytes, strings,
    numbers and numpy arrays. Any other global (``os.system``, ``builtins.eval``...) is
    refused before it is looked up, so nothing in the file is ever called but numpy's
    array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which no CIFAR batch does (tampered with?); "
                "refused to load it, nothing in it was run"
            )
        return super().find_class(module, name)


def read_cifar(paths: Sequence[str | Path], label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR "python version" batch files.

    Each file is a pickled dict holding ``b"data"``, ``(N, 3072)`` uint8 rows (the
    1024 red, then green, then blue values of a row-major 32x32 image), and the labels
    under ``label_key`` (``b"labels"`` for CIFAR-10, ``b"fine_labels"`` for CIFAR-100).
    The files are unpickled by :class:`CifarUnpickler`, which runs no code from them.

    Args:
        paths: the batch files, in order.
        label_key: the key of the labels.
        num_classes: labels must be ``0..num_classes - 1``.

    Returns:
        Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64.

    Raises:
        DatasetCorruptError: a file is not such a pickle, or holds out-of-range labels.
    """
    images, labels = [], []
    for path in paths:
        data, target = _read_cifar_batch(Path(path), label_key)
        check_labels(path, target, num_classes)
        images.append(data.reshape(-1, *CIFAR_IMAGE_SHAPE))
        labels.append(target)
    return np.concatenate(images), np.concatenate(labels)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The ``(N, 3072)`` uint8 rows and ``(N,)`` int64 labels of one CIFAR batch file."""
    try:
        with path.open("rb") as f:
            batch = CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # unpickling a damaged file can raise almost anything
        raise DatasetCorruptError(path, f"not a CIFAR batch file: {err}") from err
    if not isinstance(batch, dict):
        raise DatasetCorruptError(path, f"not a CIFAR batch file: holds a {type(batch).__name__}, not a dict")
    missing = [key for key in (b"data", label_key) if key not in batch]
    if missing:
        found = ", ".join(map(repr, batch)) or "nothing"
        raise DatasetCorruptError(path, f"CIFAR batch without {' or '.join(map(repr, missing))} (it has {found})")
    data = batch[b"data"]
    row_bytes = int(np.prod(CIFAR_IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row_bytes:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetCorruptError(path, f"b'data' should be a uint8 array of shape (N, {row_bytes}), got {found}")
    try:
        target = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise DatasetCorruptError(path, f"{label_key!r} is not a list of integers ({err})") from err
    if target.shape != (len(data),):
        raise DatasetCorruptError(path, f"holds {len(data)} images but {label_key!r} of shape {target.shape}")
    return data, target


def read_stl10_images(path: str | Path) -> np.ndarray:
    """Read an STL-10 image file (``train_X.bin``, ``test_X.bin``, ``unlabeled_X.bin``).

    The file is raw uint8, each image stored channel by channel, each channel
    column-major. It is memory-mapped, so the only copy made is the transposed result
    (2.8 GB for the 100,000 unlabeled images).

    Returns:
        Images ``(N, 3, 96, 96)`` uint8, ``(H, W)`` row-major.

    Raises:
        DatasetCorruptError: the file size is not a positive multiple of one image.
    """
    path = Path(path)
    image_bytes = int(np.prod(STL10_IMAGE_SHAPE))
    size = path.stat().st_size
    if size == 0 or size % image_bytes:
        raise DatasetCorruptError(path, f"{size} bytes is not a whole number of {image_bytes}-byte images")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, *STL10_IMAGE_SHAPE)
    return np.ascontiguousarray(raw.transpose(0, 1, 3, 2))


def read_stl10_labels(path: str | Path) -> np.ndarray:
    """Read an STL-10 label file (``train_y.bin``, ``test_y.bin``): one uint8 per image, 1..10.

    Returns:
        Labels ``(N,)`` int64, 0..9.

    Raises:
        DatasetCorruptError: a label is outside 1..10.
    """
    stored = np.fromfile(path, dtype=np.uint8)
    check_labels(path, stored, STL10_NUM_CLASSES, first=1)
    return stored.astype(np.int64) - 1
