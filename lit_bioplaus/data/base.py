"""The DataModule base class: whole splits held in memory, normalised a batch at a time."""

from __future__ import annotations

import copy
import math
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lit_bioplaus.data.transforms import ImagePreprocessing

DEFAULT_DATA_DIR = "./data"
DEFAULT_DOWNLOAD_TIMEOUT = 60.0
"""Seconds a download waits on a silent server before giving up."""


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not on disk, and were not (or could not be) downloaded."""


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Within the block, every new socket that sets no timeout of its own gives up a
    connect, send or receive after ``seconds`` without progress (``TimeoutError``).

    ``socket.setdefaulttimeout`` is process-wide: sockets other threads open meanwhile
    get the timeout too. The previous default is restored on exit.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def timed_out(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it wraps (``URLError.reason``, the cause or context
    chain) is a socket timeout."""
    while err is not None:
        if isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError):
            return True
        err = err.__cause__ or err.__context__
    return False


class InMemoryImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """Images and labels held in memory, normalised on access, a whole batch at once.

    The DataLoader fetches batches through :meth:`__getitems__`, which indexes and
    normalises the batch with a few tensor operations (no per-sample Python); use it
    with ``collate_fn=`` :func:`collate`.

    Args:
        images: ``(N, C, H, W)`` uint8 images.
        targets: ``(N,)`` int64 labels (``-1`` for unlabeled images).
        mean: per-channel mean of the images scaled to ``[0, 1]``, length ``C``.
        std: per-channel standard deviation, length ``C``.
    """

    def __init__(self, images: Tensor, targets: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if targets.shape != images.shape[:1]:
            raise ValueError(f"{len(images)} images but targets of shape {tuple(targets.shape)}")
        if not len(mean) == len(std) == images.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({images.shape[1]})")
        self.images = images
        self.targets = targets.long()
        self.preprocessing = ImagePreprocessing(mean, std)
        self.indices = torch.arange(len(images))

    def subset(self, indices: Tensor) -> InMemoryImageDataset:
        """The samples at ``indices`` (``(M,)`` int64), sharing this dataset's storage."""
        subset = copy.copy(self)
        subset.indices = self.indices[indices]
        return subset

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """The batch at ``indices``: float32 images ``(B, C, H, W)``, normalised as
        ``(x / 255 - mean) / std``, and int64 labels ``(B,)``."""
        rows = self.indices[torch.as_tensor(indices, dtype=torch.long)]
        return self.preprocessing.normalize(self.images[rows]), self.targets[rows]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """One sample: a float32 image ``(C, H, W)`` and its int64 label ``()``."""
        images, targets = self.__getitems__([index])
        return images[0], targets[0]


def collate(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``collate_fn`` for :class:`InMemoryImageDataset`, whose ``__getitems__`` already
    returns the stacked batch: passes it through."""
    return batch


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can begin an epoch part-way through.

    After a mid-epoch checkpoint, ``resume_from`` (samples of this replica already
    trained on in the current epoch) makes the next pass skip them, so a resumed run
    sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.resume_from = self.resume_from, 0
        return iter(indices[start:])


def split_indices(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of ``range(n)`` into ``(kept, held_out)`` index tensors, with
    ``round(fraction * n)`` held out."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held_out = round(fraction * n)
    return permutation[n_held_out:], permutation[:n_held_out]


def check_loader_options(batch_size: int, eval_batch_size: int | None, num_workers: int, pad: int) -> None:
    """Refuse batch sizes below 1, negative worker counts and negative padding (one
    ``ValueError`` naming the option)."""
    if pad < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if eval_batch_size is not None and eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be non-negative, got {num_workers}")


class VisionDataModule(L.LightningDataModule, ABC):
    """Base class of the image-classification DataModules.

    ``setup`` loads a whole split into memory as ``(N, C, H, W)`` uint8 images and
    ``(N,)`` int64 labels; batches come out as float32 images normalised with the
    data set's ``mean`` and ``std``, and int64 labels. The training split is divided
    into train and validation sets by a seeded random split; ``test_dataloader`` and
    ``predict_dataloader`` serve the official test split.

    The class attributes ``num_classes``, ``input_shape``, ``mean`` and ``std`` are
    available without touching the disk (the CLI links ``num_classes`` and
    ``input_shape`` into the model when both are instantiated).

    Subclasses set the class attributes and implement :meth:`load_split`; those reading
    files list them in ``train_files`` / ``test_files``, find them with
    :meth:`split_paths`, and name a ``torchvision_dataset`` that can download them.

    Args:
        data_dir: directory holding the data set (in torchvision's layout, or flat
            where the subclass says so). None searches ``default_data_dirs``
            (``./data``) and downloads into ``./data``.
        download: download the files in ``prepare_data`` when they are missing.
        batch_size: training batch size.
        eval_batch_size: validation / test / predict batch size; None uses ``batch_size``.
        num_workers: DataLoader worker processes (kept alive between epochs).
        val_fraction: fraction of the training split held out for validation.
        seed: seed of the train / validation split.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        shuffle: reshuffle the training split every epoch; false keeps the split's
            order (e.g. to compare runs with different numbers of DDP processes).
        pad: zero-pad every image by this many pixels on each side (e.g. 2 turns
            28x28 into 32x32 for networks that halve the size four times);
            ``input_shape`` grows to match.
        download_timeout: seconds a download waits on a server that sends nothing
            (to connect, or for the next data) before it fails naming the URL.
    """

    name: ClassVar[str]
    """Human-readable name of the data set, used in messages."""
    num_classes: ClassVar[int]
    classes: ClassVar[tuple[str, ...]]
    """Class names, index order (torchvision's where it has them)."""
    num_tasks: ClassVar[int] = 1
    """Tasks per image (more than 1 for the guided data sets, whose labels are ``(N, T)``)."""
    input_shape: tuple[int, int, int]
    """``(C, H, W)`` of one image as served (after ``pad``)."""
    mean: ClassVar[tuple[float, ...]]
    """Per-channel mean of the data set's images scaled to ``[0, 1]``."""
    std: ClassVar[tuple[float, ...]]
    """Per-channel standard deviation of the data set's images scaled to ``[0, 1]``."""

    train_files: tuple[str, ...]
    """Names of the files :meth:`load_split` reads for the training split, in order."""
    test_files: tuple[str, ...]
    """Names of the files :meth:`load_split` reads for the test split, in order."""
    file_suffixes: ClassVar[tuple[str, ...]] = ("",)
    """Suffixes a file name may carry on disk, tried in order (e.g. ``("", ".gz")``)."""
    subfolders: ClassVar[tuple[str, ...]] = (".",)
    """Folders, relative to a data directory, that may hold the files, tried in order."""
    default_data_dirs: ClassVar[tuple[str, ...]] = (DEFAULT_DATA_DIR,)
    """Data directories searched, in order, when ``data_dir`` is None."""
    url: ClassVar[str]
    """Where the files are published."""
    download_hints: ClassVar[tuple[str, ...]] = ()
    """Further ways to get the files, listed in the not-found message."""
    torchvision_dataset: ClassVar[Callable[..., Any]]
    """torchvision dataset class whose ``(root, download=True)`` fetches the files into
    ``root`` in the layout searched here."""

    def __init__(
        self,
        *,
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
        pad: int = 0,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> None:
        super().__init__()
        check_loader_options(batch_size, eval_batch_size, num_workers, pad)
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not (download_timeout > 0 and math.isfinite(download_timeout)):
            raise ValueError(f"download_timeout must be a positive number of seconds, got {download_timeout}")
        self.data_dir = data_dir
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self.pad = pad
        self.download_timeout = download_timeout
        channels, height, width = type(self).input_shape
        self.input_shape = (channels, height + 2 * pad, width + 2 * pad)
        self._resume_batches = 0
        self._resume_geometry: dict[str, int] | None = None
        self.train_set: InMemoryImageDataset | None = None
        self.val_set: InMemoryImageDataset | None = None
        self.test_set: InMemoryImageDataset | None = None

    def preprocessing(self) -> ImagePreprocessing:
        """How raw images become this DataModule's batches (``pad``, then ``mean`` /
        ``std``): what its datasets apply, and what a zoo entry records."""
        return ImagePreprocessing(self.mean, self.std, self.pad)

    @abstractmethod
    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """Read the training (``train=True``) or test split.

        Returns:
            ``(N, C, H, W)`` uint8 images and ``(N,)`` int64 labels.

        Raises:
            DatasetNotFoundError: the files are missing.
        """

    @property
    def candidate_folders(self) -> list[Path]:
        """Folders searched for the files, in order."""
        data_dirs = self.default_data_dirs if self.data_dir is None else (self.data_dir,)
        return [Path(d).expanduser() / sub for d in data_dirs for sub in self.subfolders]

    def locate(self) -> dict[str, Path]:
        """Path of every file in ``train_files`` and ``test_files``, all taken from the
        first candidate folder that holds them all.

        Raises:
            DatasetNotFoundError: no candidate folder holds them all.
        """
        paths = self._find()
        if paths is None:
            raise self._not_found_error()
        return paths

    def split_paths(self, train: bool) -> list[Path]:
        """Paths of ``train_files`` (``train=True``) or ``test_files``, in order."""
        paths = self.locate()
        return [paths[name] for name in (self.train_files if train else self.test_files)]

    def prepare_data(self) -> None:
        """Download the files when ``download=True`` and they are missing, then check
        that they are there.

        Raises:
            DatasetNotFoundError: the files are missing (also when downloading failed or
                timed out).
        """
        if self.download and self._find() is None:
            self._download()
        self.locate()

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (each once): the training split, divided into
        ``train_set`` and ``val_set``, for ``"fit"`` and ``"validate"``; the test split,
        ``test_set``, for ``"test"`` and ``"predict"``; all for None.

        Raises:
            ValueError: ``val_fraction`` leaves no training images.
        """
        if stage in (None, "fit", "validate") and self.train_set is None:
            dataset = self._load_dataset(train=True)
            train, val = split_indices(len(dataset), self.val_fraction, self.seed)
            if len(train) == 0:
                raise ValueError(
                    f"{self.name}: val_fraction {self.val_fraction} leaves no training images out of {len(dataset)}"
                )
            self.train_set, self.val_set = dataset.subset(train), dataset.subset(val)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._load_dataset(train=False)

    def train_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        """Training batches in an order fixed by ``seed`` and the epoch alone.

        The sampler is always a ``DistributedSampler`` (one replica without DDP): epoch
        ``e`` visits the permutation ``randperm(N)`` seeded with ``seed + e``, and rank
        ``r`` of ``R`` takes every ``R``-th sample of it. So ``R`` processes with batch
        ``B`` see exactly the global batches of one process with batch ``R * B``.
        After a mid-epoch checkpoint the sampler skips the batches already done.
        """
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not loaded this split yet")
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        self._check_resume_geometry()
        sampler.resume_from, self._resume_batches = self._resume_batches * self.batch_size, 0
        return self._dataloader(self.train_set, self.batch_size, sampler=sampler)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: how many training batches of the current epoch are done
        (non-zero only for a checkpoint taken mid-epoch), and the batch geometry they
        were counted in (batch size, processes, training images)."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "train_batches_done": 0 if done >= trainer.num_training_batches else done,
            "batch_geometry": self._batch_geometry(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_batches = int(state_dict.get("train_batches_done", 0))
        self._resume_geometry = state_dict.get("batch_geometry")

    def _batch_geometry(self) -> dict[str, int]:
        trainer = self.trainer
        return {
            "batch_size": self.batch_size,
            "processes": trainer.world_size if trainer else 1,
            "training_images": len(self.train_set) if self.train_set is not None else 0,
        }

    def _check_resume_geometry(self) -> None:
        """A mid-epoch resume skips the batches already done, counted in the checkpoint's
        batch size, processes and training split: any of them changed would silently skip
        other samples, so it is refused."""
        saved = self._resume_geometry
        if not self._resume_batches or saved is None or saved == self._batch_geometry():
            return
        now = self._batch_geometry()
        changed = ", ".join(f"{key} {saved[key]} -> {now[key]}" for key in now if saved.get(key) != now[key])
        raise ValueError(
            f"cannot resume mid-epoch: the checkpoint stopped {self._resume_batches} batches into an epoch, "
            f"but {changed}; resume with the same settings, or from an end-of-epoch checkpoint"
        )

    def val_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return self._dataloader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return self._dataloader(self.test_set, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return self._dataloader(self.test_set, self.eval_batch_size)

    @property
    def _files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files)

    def _find(self) -> dict[str, Path] | None:
        for folder in self.candidate_folders:
            paths = {name: self._find_file(folder, name) for name in self._files}
            if all(paths.values()):
                return paths
        return None

    def _find_file(self, folder: Path, name: str) -> Path | None:
        candidates = (folder / f"{name}{suffix}" for suffix in self.file_suffixes)
        return next((path for path in candidates if path.is_file()), None)

    @property
    def _download_root(self) -> Path:
        return Path(self.data_dir or DEFAULT_DATA_DIR).expanduser().absolute()

    @property
    def _download_urls(self) -> list[str]:
        """Where ``torchvision_dataset`` downloads from: its mirrors (MNIST's family) or
        its URL, else this data set's ``url``."""
        dataset = self.torchvision_dataset
        return list(getattr(dataset, "mirrors", None) or [getattr(dataset, "url", self.url)])

    def _download(self) -> None:
        try:
            with socket_timeout(self.download_timeout):
                self.torchvision_dataset(self._download_root, download=True)
        except (OSError, RuntimeError) as err:  # URLError and TimeoutError are OSErrors
            raise self._not_found_error(self._download_failure(err)) from err

    def _download_failure(self, err: BaseException) -> str:
        """One line saying why the download into ``_download_root`` failed."""
        urls = " or ".join(self._download_urls)
        if timed_out(err):
            return (
                f"Downloading from {urls} into {self._download_root} timed out: no answer within "
                f"{self.download_timeout:g} s (raise `--data.download_timeout` for a slow connection)"
            )
        details = " ".join(str(err).split())  # torchvision lists the mirrors it tried on several lines
        return f"Downloading from {urls} into {self._download_root} failed: {details}"

    def _not_found_error(self, reason: str | None = None) -> DatasetNotFoundError:
        suffixes = "".join(f"[{suffix}]" for suffix in self.file_suffixes if suffix)
        files = ", ".join(f"{name}{suffixes}" for name in self._files)
        folders = "".join(f"\n  {folder.absolute()}" for folder in self.candidate_folders)
        hints = [
            *self.download_hints,
            f"get the files from {self.url} and put them in one of the folders above",
        ]
        if not self.download:
            hints.insert(0, f"pass `--data.download true` to download it to {self._download_root}")
        return DatasetNotFoundError(
            f"{self.name} not found: looked for {files} in{folders}\n"
            + (f"{reason}\n" if reason else "")
            + "To get it:"
            + "".join(f"\n  - {hint}" for hint in hints)
        )

    def _load_dataset(self, train: bool) -> InMemoryImageDataset:
        images, targets = self.load_split(train)
        stored_shape = type(self).input_shape
        if images.shape[1:] != stored_shape:
            raise ValueError(f"{self.name}: expected images of shape (N, *{stored_shape}), got {tuple(images.shape)}")
        return InMemoryImageDataset(self.preprocessing().pad_images(images), targets, self.mean, self.std)

    def _dataloader(
        self, dataset: InMemoryImageDataset | None, batch_size: int, sampler: Sampler[int] | None = None
    ) -> DataLoader[tuple[Tensor, Tensor]]:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not loaded this split yet")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
