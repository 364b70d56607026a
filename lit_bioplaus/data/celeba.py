"""CelebA: aligned face images, 40 binary attributes, one task per attribute
(ALGORITHMS.md section 4.3).

Files, in torchvision's layout: ``<data_dir>/celeba/img_align_celeba/*.jpg`` (202,599
aligned 178x218 JPEGs), ``list_attr_celeba.txt`` (the image count, the 40 attribute
names, then one line ``name.jpg  v_1 ... v_40`` per image, ``v = +1`` present, ``-1``
absent) and ``list_eval_partition.txt`` (``name.jpg s``, ``s`` = 0 train, 1 validation,
2 test: 162,770 / 19,867 / 19,962 images).

JPEG decoding would bound training, so each split is decoded once into a uint8 cache
``<cache_dir>/<split>_<H>x<W>.npy`` of shape ``(N, 3, H, W)`` (``split`` = ``train``,
``val``, ``test``), memory-mapped afterwards: 116,412 bytes per image at 218x178 (the
training split 18.9 GB, all three 23.6 GB), 12,288 at 64x64 (2.0 GB, 2.5 GB).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
import torchvision.datasets
from lightning.pytorch.utilities import rank_zero_warn
from rich.progress import track
from torch import Tensor

from lit_bioplaus.data.datasets import DatasetCorruptError
from lit_bioplaus.data.image_files import read_image
from lit_bioplaus.data.multi_task import MultiTaskDataModule, MultiTaskImageDataset
from lit_bioplaus.io import atomic_write

ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
"""CelebA's 40 attributes, in the order of ``list_attr_celeba.txt`` (task ``t`` is
``ATTRIBUTES[t]``)."""

ATTRIBUTE_FILE, PARTITION_FILE, IMAGE_FOLDER = "list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba/"
SPLITS = {"train": 0, "val": 1, "test": 2}
"""Split name -> its code in ``list_eval_partition.txt``."""
DECODE_CHUNK = 256
"""Images decoded in parallel at a time while a cache is built."""


class Split(NamedTuple):
    """One split of the partition file."""

    files: list[Path]
    """The ``N`` JPEG paths, in the attribute file's order."""
    labels: Tensor
    """``(N, 40)`` int64, 1 where the attribute is present."""


def read_attributes(path: Path) -> tuple[list[str], Tensor]:
    """``list_attr_celeba.txt``: its image names ``[N]`` and labels ``(N, 40)`` int64,
    ``(v + 1) / 2`` of the file's ``v = ±1`` (1 present, 0 absent).

    Raises:
        DatasetCorruptError: the header is not the count and :data:`ATTRIBUTES`, the count
            is wrong, or a line is not a name and 40 values of ±1.
    """
    lines = path.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DatasetCorruptError(path, "the first line is not the number of images")
    if tuple(lines[1].split()) != ATTRIBUTES:
        raise DatasetCorruptError(path, f"the second line does not name CelebA's {len(ATTRIBUTES)} attributes")
    body = [line for line in lines[2:] if line.strip()]
    if len(body) != int(lines[0]):
        raise DatasetCorruptError(path, f"the first line says {int(lines[0])} images, but {len(body)} are listed")
    names = [line.split(None, 1)[0] for line in body]
    values = np.empty((len(body), len(ATTRIBUTES)), dtype=np.int8)
    for row, line in enumerate(body):
        try:
            values[row] = line.split()[1:]
        except ValueError:  # not 40 fields, or not integers
            values[row] = 0
    bad = np.flatnonzero(~np.isin(values, (-1, 1)).all(axis=1))
    if len(bad):
        raise DatasetCorruptError(path, f"the line of {names[bad[0]]} is not {len(ATTRIBUTES)} values of 1 or -1")
    return names, torch.from_numpy(values == 1).long()


def read_partition(path: Path, names: Sequence[str]) -> np.ndarray:
    """``list_eval_partition.txt``: the split code (0 train, 1 val, 2 test) of each image
    of ``names``, ``(N,)`` int64.

    Raises:
        DatasetCorruptError: a line is not ``name code`` with a code in 0..2, or the file
            does not list exactly the images of ``names``.
    """
    partition: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DatasetCorruptError(path, f"the line {line.strip()!r} is not an image name and 0, 1 or 2")
        partition[fields[0]] = int(fields[1])
    missing = [name for name in names if name not in partition]
    if missing or len(partition) != len(names):
        raise DatasetCorruptError(
            path,
            f"it lists {len(partition)} images, {len(missing)} of the {len(names)} in {ATTRIBUTE_FILE} missing"
            + (f" (first: {missing[0]})" if missing else ""),
        )
    return np.array([partition[name] for name in names], dtype=np.int64)


def cache_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why the cache ``path`` cannot serve ``shape`` uint8 images (it is missing, is no
    ``.npy`` file, or holds another shape or type), or None when it can."""
    if not path.is_file():
        return "is missing"
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:  # not a .npy file, or truncated
        return f"is not a readable .npy file ({' '.join(str(err).split())})"
    if array.shape != shape or array.dtype != np.uint8:
        return f"holds {array.shape} {array.dtype} images, expected {shape} uint8"
    return None


def map_images(path: Path) -> Tensor:
    """The ``(N, 3, H, W)`` uint8 cache ``path`` as a tensor on a read-only memory map of
    the file: nothing is read until indexed, and the pages stay in the OS's file cache."""
    array = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():  # read-only by design: the datasets never write into it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def decode(path: Path, shape: tuple[int, int, int]) -> Tensor:
    """One JPEG as ``shape`` uint8 (:func:`read_image`: RGB, resized by PIL's antialiased
    bilinear filter unless already ``H x W``).

    Raises:
        DatasetCorruptError: the file is missing or is not a readable image.
    """
    try:
        return read_image(path, shape)
    except FileNotFoundError:
        raise DatasetCorruptError(path.parent, f"{path.name}, listed in {ATTRIBUTE_FILE}, is missing") from None
    except OSError as err:  # PIL's UnidentifiedImageError, a truncated file
        raise DatasetCorruptError(path, f"not a readable image ({err})") from err


def decoded(files: Sequence[Path], shape: tuple[int, int, int]) -> Iterator[Tensor]:
    """The images of ``files`` in order, decoded by :func:`decode` on a thread per core
    (PIL releases the GIL while it decodes and resizes), :data:`DECODE_CHUNK` at a time."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(files), DECODE_CHUNK):
            yield from pool.map(functools.partial(decode, shape=shape), files[start : start + DECODE_CHUNK])


def build_cache(path: Path, files: Sequence[Path], shape: tuple[int, int, int], description: str) -> None:
    """Decode ``files`` into the ``.npy`` file ``path``: ``(N, *shape)`` uint8, written
    atomically (a temporary file beside it, fsync, rename), with a progress bar.

    Raises:
        ValueError: the folder has not the space for it.
        DatasetCorruptError: an image is missing or unreadable (nothing is left behind).
    """
    full_shape = (len(files), *shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    needed, free = int(np.prod(full_shape)), shutil.disk_usage(path.parent).free
    if needed > free:
        raise ValueError(
            f"the CelebA cache {path} needs {needed / 1e9:.1f} GB, but {path.parent} has {free / 1e9:.1f} GB free: "
            "free space, choose another `--data.cache_dir` or a smaller `--data.image_size`"
        )

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as f:
            write_header(f, full_shape)
            for image in track(decoded(files, shape), total=len(files), description=description):
                f.write(image.numpy().data)

    atomic_write(path, write)


def write_header(f: BinaryIO, shape: tuple[int, ...]) -> None:
    """The ``.npy`` header of a C-ordered uint8 array of ``shape`` (its data follows)."""
    np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})


class CachedMultiTaskDataset(MultiTaskImageDataset):
    """A ``MultiTaskImageDataset`` whose images are a memory-mapped uint8 ``.npy`` cache
    (:func:`map_images`): a batch reads its ``B`` images from the file, never the whole
    array. Pickled (for spawned workers or processes) without the images: the copy maps
    the file again.

    Args:
        path: the ``(N, C, H, W)`` uint8 cache.
        targets: ``(N, T)`` labels.
        mean: per-channel mean of the images scaled to ``[0, 1]``.
        std: per-channel standard deviation.
    """

    def __init__(self, path: Path, targets: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        self.path = path
        super().__init__(map_images(path), targets, mean, std)

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "images"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.images = map_images(self.path)


class CelebA(MultiTaskDataModule):
    """CelebA for guided learning: aligned faces, labels ``(N, 40)`` (1 = the attribute is
    present), 40 binary tasks, one logit each (``num_classes = 1``: BCE with logits).

    Splits are those of ``list_eval_partition.txt`` (162,770 / 19,867 / 19,962 images;
    ``val_fraction`` is not used). Images are served as the official code serves them,
    ``(x / 255 - 0.5) / 0.5`` per channel, float32 ``(B, 3, H, W)``, ``(H, W) =
    image_size``: the aligned 218x178 images as they are (the default), or the whole image
    resized to ``image_size`` by PIL's bilinear filter, antialiased when shrinking (e.g.
    64x64, Kurin et al.'s resolution; the aspect ratio is not kept).

    Each split is decoded once into a uint8 cache ``<cache_dir>/<split>_<H>x<W>.npy``
    ``(N, 3, H, W)`` (see the module docstring for sizes), by ``prepare_data`` (which
    Lightning runs on one process per node) or by ``setup`` when it is missing, and
    memory-mapped afterwards. A cache of the wrong shape or type, or an unreadable one, is
    rebuilt with a warning; one built from other images of the same count is not noticed:
    delete the cache folder after changing the images.

    Batches as every ``MultiTaskDataModule``'s: training ``(x, labels (B, 40), task
    (B,))``, each sample's task drawn uniformly per epoch from ``(seed, epoch)``;
    evaluation batches carry task 0.

    Args:
        image_size: ``(H, W)`` of the served images, both positive.
        cache_dir: folder of the caches; None: ``cache/`` beside ``img_align_celeba/``.
        **kwargs: see ``VisionDataModule`` (``pad`` must stay 0: the caches are served as
            they are; ``val_fraction`` is not used). ``download=True`` fetches the files
            with ``torchvision.datasets.CelebA(root, split="all", download=True)`` (from
            Google Drive: it needs ``gdown``).
    """

    name = "CelebA"
    num_classes = 1
    classes = ("absent", "present")
    num_tasks = len(ATTRIBUTES)
    attributes = ATTRIBUTES
    """Task ``t`` asks for attribute ``attributes[t]``."""
    input_shape = (3, 218, 178)
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    train_files = (ATTRIBUTE_FILE, PARTITION_FILE, IMAGE_FOLDER)
    """Every split reads these (a name ending in ``/`` is a folder)."""
    test_files = ()
    subfolders = ("celeba",)
    url = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
    download_hints = (
        "`pip install gdown` first: torchvision downloads CelebA from Google Drive, which may refuse "
        "for a while when a file's daily quota is spent",
    )
    torchvision_dataset = functools.partial(torchvision.datasets.CelebA, split="all")

    def __init__(self, image_size: tuple[int, int] = (218, 178), cache_dir: str | None = None, **kwargs: Any) -> None:
        if len(image_size) != 2 or not all(isinstance(n, int) and n > 0 for n in image_size):
            raise ValueError(f"image_size must be two positive integers [H, W], got {list(image_size)}")
        if kwargs.get("pad", 0):
            raise ValueError(f"CelebA serves its cached images as they are: pad must be 0, got {kwargs['pad']}")
        super().__init__(**kwargs)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.input_shape = (3, *self.image_size)
        self.cache_dir = cache_dir
        self._splits: dict[str, Split] | None = None

    def prepare_data(self) -> None:
        """Download the files if asked and they are missing, then build the caches of the
        three splits that are missing or bad.

        Raises:
            DatasetNotFoundError: the files are missing (or the download failed).
            DatasetCorruptError: a file does not hold what CelebA's does.
        """
        super().prepare_data()
        for split in SPLITS:
            self.cache(split)

    def setup(self, stage: str | None = None) -> None:
        """The splits ``stage`` needs (each once) as :class:`CachedMultiTaskDataset`:
        ``train_set`` and ``val_set`` for ``"fit"``, ``val_set`` for ``"validate"``,
        ``test_set`` for ``"test"`` and ``"predict"``, all for None; a missing or bad cache
        is built first."""
        for split, attribute, needed in (
            ("train", "train_set", stage in (None, "fit")),
            ("val", "val_set", stage in (None, "fit", "validate")),
            ("test", "test_set", stage in (None, "test", "predict")),
        ):
            if needed and getattr(self, attribute) is None:
                dataset = CachedMultiTaskDataset(self.cache(split), self.splits()[split].labels, self.mean, self.std)
                setattr(self, attribute, dataset)

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """The training (``train=True``) or test split: memory-mapped uint8 images ``(N, 3,
        H, W)`` (from the cache, built if needed) and labels ``(N, 40)``."""
        split = "train" if train else "test"
        return map_images(self.cache(split)), self.splits()[split].labels

    def splits(self) -> dict[str, Split]:
        """The three splits of the partition file (read once).

        Raises:
            DatasetNotFoundError: the files are missing.
            DatasetCorruptError: a text file does not hold what CelebA's does.
        """
        if self._splits is None:
            paths = self.locate()
            names, labels = read_attributes(paths[ATTRIBUTE_FILE])
            codes = read_partition(paths[PARTITION_FILE], names)
            folder = paths[IMAGE_FOLDER]
            self._splits = {}
            for split, code in SPLITS.items():
                rows = np.flatnonzero(codes == code)
                self._splits[split] = Split([folder / names[i] for i in rows], labels[torch.from_numpy(rows)])
        return self._splits

    def cache_path(self, split: str) -> Path:
        """``<cache_dir>/<split>_<H>x<W>.npy`` (``cache_dir`` None: ``cache/`` beside the
        image folder)."""
        height, width = self.image_size
        folder = Path(self.cache_dir).expanduser() if self.cache_dir else self.locate()[IMAGE_FOLDER].parent / "cache"
        return folder / f"{split}_{height}x{width}.npy"

    def cache(self, split: str) -> Path:
        """The path of ``split``'s cache, built first when it is missing or bad (see
        :func:`cache_problem`; a bad one with a warning)."""
        path, split_data = self.cache_path(split), self.splits()[split]
        shape = (3, *self.image_size)
        problem = cache_problem(path, (len(split_data.files), *shape))
        if problem is not None:
            if path.exists():
                rank_zero_warn(f"the CelebA cache {path} {problem}: rebuilding it")
            build_cache(path, split_data.files, shape, f"Decoding CelebA {split} ({len(split_data.files)} images)")
        return path

    def _find_file(self, folder: Path, name: str) -> Path | None:
        """``folder / name``, where ``name`` ending in ``/`` must be a folder, else a file."""
        path = folder / name
        return path if (path.is_dir() if name.endswith("/") else path.is_file()) else None
