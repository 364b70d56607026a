"""``predict`` on a folder of one's own images: PNG, JPEG and the other formats PIL reads,
preprocessed exactly as the built-in DataModules preprocess their splits."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from lit_bioplaus.data.base import DatasetNotFoundError, InMemoryImageDataset, VisionDataModule, check_loader_options
from lit_bioplaus.data.modules import datamodule_class

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
"""File endings read as images (any case): torchvision's ``IMG_EXTENSIONS``."""

MODES: dict[int, str] = {1: "L", 3: "RGB"}
"""PIL mode of the images for each number of channels."""


def find_images(root: Path) -> list[Path]:
    """The image files under ``root``, at any depth, sorted by their path relative to
    ``root`` (as text, so ``img10`` comes before ``img2``: zero-pad numbers); files and
    folders whose name starts with ``.`` are skipped."""
    found = [
        path
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def read_image(path: Path, shape: tuple[int, int, int]) -> Tensor:
    """One image file as ``shape`` = ``(C, H, W)`` uint8: converted by PIL to ``L`` (C = 1)
    or ``RGB`` (C = 3, dropping any alpha), then, unless it is already ``H x W``, resized
    to ``H x W`` by PIL's bilinear filter (antialiased when shrinking, as torchvision's
    ``Resize``; the aspect ratio is not kept)."""
    channels, height, width = shape
    with Image.open(path) as image:
        converted = image.convert(MODES[channels])
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.array(converted, dtype=np.uint8).reshape(height, width, channels)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class ImageFiles(VisionDataModule):
    """The images in a folder, for ``predict`` only (they have no labels).

    Every file under ``root`` ending in one of :data:`IMAGE_EXTENSIONS` is read, at any
    depth, in the sorted order of its path relative to ``root`` (see :func:`find_images`):
    sample ``i`` of the predict set is ``files[i]``. Each image is read by :func:`read_image`
    (converted to ``input_shape``'s channels, resized to its ``H x W``), zero-padded by
    ``pad``, scaled to ``[0, 1]`` and normalised with ``mean`` / ``std``: the
    ``(x / 255 - mean) / std`` of :class:`InMemoryImageDataset`, which holds them. Batches
    are ``(images (B, C, H + 2 pad, W + 2 pad), labels (B,))``, labels ``-1``.

    ``like`` takes ``input_shape``, ``mean``, ``std``, ``num_classes`` and the class
    names from a built-in DataModule, so images meet a model the way its training data
    did; arguments given as well override them. ``fit``, ``validate`` and ``test`` are
    refused.

    Args:
        root: the folder of images.
        like: name of a built-in DataModule (:data:`DATAMODULES`: ``"digits"``,
            ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ...).
        input_shape: ``(C, H, W)`` of the images before ``pad``; ``C`` is 1 or 3.
        mean: per-channel mean of the training images scaled to ``[0, 1]``, length ``C``.
        std: per-channel standard deviation, length ``C``.
        num_classes: classes of the model (linked into it by the CLI).
        num_tasks: tasks of the model (more than 1 for a guided one).
        pad: zero-pad every image by this many pixels on each side, as the model's
            training data was (``--data.pad`` of ``fit``).
        batch_size: predict batch size.
        eval_batch_size: predict batch size if given (overrides ``batch_size``, so a
            config's evaluation batch size carries over).
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory.
    """

    def __init__(
        self,
        root: str,
        like: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        num_classes: int | None = None,
        num_tasks: int = 1,
        pad: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        # Not VisionDataModule.__init__: it takes the image shape from the class, here it
        # comes from the arguments.
        L.LightningDataModule.__init__(self)
        reference = datamodule_class(like, " for `like`") if like is not None else None
        image_shape = input_shape or (reference.input_shape if reference else None)
        mean = mean or (reference.mean if reference else None)
        std = std or (reference.std if reference else None)
        num_classes = num_classes or (reference.num_classes if reference else None)
        if image_shape is None or mean is None or std is None or num_classes is None:
            raise ValueError("ImageFiles needs `like`, or all of `input_shape`, `mean`, `std` and `num_classes`")
        if len(image_shape) != 3 or image_shape[0] not in MODES:
            raise ValueError(f"input_shape must be (C, H, W) with C = 1 or 3, got {tuple(image_shape)}")
        if not len(mean) == len(std) == image_shape[0]:
            raise ValueError(f"mean and std need one value per channel ({image_shape[0]}), got {mean} and {std}")
        check_loader_options(batch_size, eval_batch_size, num_workers, pad)
        self.root = Path(root).expanduser()
        self.name = f"image folder {self.root}"
        self.image_shape: tuple[int, int, int] = tuple(image_shape)  # type: ignore[assignment]
        self.input_shape = (image_shape[0], image_shape[1] + 2 * pad, image_shape[2] + 2 * pad)
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_classes, self.num_tasks = num_classes, num_tasks
        keep_names = reference is not None and reference.num_classes == num_classes
        self.classes = reference.classes if keep_names else tuple(str(c) for c in range(num_classes))
        self.pad = pad
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.files: list[str] = []
        """Paths of the images relative to ``root`` (``/``-separated), row order; set by ``setup``."""
        self.predict_set: InMemoryImageDataset | None = None

    def find(self) -> list[Path]:
        """The image files, row order (:func:`find_images`).

        Raises:
            DatasetNotFoundError: ``root`` is not a folder, or holds no images.
        """
        if not self.root.is_dir():
            missing = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetNotFoundError(f"image folder {self.root.absolute()} {missing}")
        paths = find_images(self.root)
        if not paths:
            endings = ", ".join(IMAGE_EXTENSIONS)
            raise DatasetNotFoundError(f"no images in {self.root.absolute()}: looked at any depth for {endings} files")
        return paths

    def prepare_data(self) -> None:
        """Check that ``root`` holds images.

        Raises:
            DatasetNotFoundError: it does not.
        """
        self.find()

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """The images ``(N, *image_shape)`` uint8 with labels ``-1`` ``(N,)``; there is no
        training split."""
        if train:
            self._refuse("fit")
        paths = self.find()
        self.files = [path.relative_to(self.root).as_posix() for path in paths]
        images = torch.stack([read_image(path, self.image_shape) for path in paths])
        return images, torch.full((len(images),), -1, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        """Read the images for ``"predict"``; any other stage is refused.

        Raises:
            ValueError: ``stage`` is not ``"predict"``.
            DatasetNotFoundError: ``root`` holds no images.
        """
        if stage != "predict":
            self._refuse("every stage" if stage is None else TrainerFn(stage).value)
        if self.predict_set is None:
            images, targets = self.load_split(train=False)
            self.predict_set = InMemoryImageDataset(
                self.preprocessing().pad_images(images), targets, self.mean, self.std
            )

    def predict_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return self._dataloader(self.predict_set, self.eval_batch_size)

    def train_dataloader(self) -> NoReturn:
        self._refuse("fit")

    def val_dataloader(self) -> NoReturn:
        self._refuse("validate")

    def test_dataloader(self) -> NoReturn:
        self._refuse("test")

    def _refuse(self, stage: str) -> NoReturn:
        raise ValueError(
            f"ImageFiles serves `predict` only (its images have no labels), not {stage}: "
            "use a labelled DataModule for fit / validate / test"
        )
