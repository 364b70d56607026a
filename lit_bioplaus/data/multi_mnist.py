"""Multi-MNIST: two digits overlaid, one task per digit (ALGORITHMS.md section 4.2).

The official geometry: a zero 36x36 canvas, the left digit (image ``i``) at
``[0:28, 0:28]``, the right digit (image ``j``, uniform over the same split) at
``[6:34, 6:34]``, overlap by pixelwise max, resized to 28x28 by PIL's NEAREST (rows and
columns ``NEAREST_INDEX``). Labels ``(left, right)``; task 0 asks for the left digit,
task 1 for the right. Every image of a split is the left digit exactly once; the right
partners are drawn by a generator seeded with ``generator_seed`` (the official draw is
unseeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from lit_bioplaus.data.base import VisionDataModule
from lit_bioplaus.data.modules import MNIST, Digits, FashionMNIST
from lit_bioplaus.data.multi_task import MultiTaskDataModule, MultiTaskImageDataset

NEAREST_INDEX = (0, 1, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 16, 17, 18, 19, 21, 22, 23, 25, 26, 27, 28, 30, 31, 32, 34, 35)
"""Rows / columns of the 36x36 canvas that PIL's NEAREST resize to 28x28 keeps."""

CANVAS, RIGHT_OFFSET, DIGIT = 36, 6, 28

Source = Literal["mnist", "fashion_mnist", "digits"]
SOURCES: dict[str, type[VisionDataModule]] = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "digits": Digits}
STATISTICS: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.2860, 0.3530),
    "digits": (0.1307, 0.3081),
}
"""Normalisation ``(mean, std)`` per source: MNIST's and Fashion-MNIST's own (as the
official code), and MNIST's for the upscaled digits."""


def upscale_digits(images: Tensor) -> Tensor:
    """sklearn's 8x8 digits as 28x28 MNIST-like images: each pixel repeated 3x3 (24x24),
    then a zero border of 2. ``(N, 1, 8, 8) -> (N, 1, 28, 28)`` uint8."""
    return F.pad(images.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3), (2, 2, 2, 2))


def overlay_pairs(images: Tensor, partners: Tensor) -> Tensor:
    """Multi-MNIST images: image ``n`` on the left, image ``partners[n]`` on the right.

    Args:
        images: ``(N, 1, 28, 28)`` uint8.
        partners: ``(N,)`` int64 indices into ``images``.

    Returns:
        ``(N, 1, 28, 28)`` uint8: the 36x36 canvas, pixelwise max of the two placements,
        resized by nearest neighbour.
    """
    n = images.shape[0]
    canvas = torch.zeros(n, 1, CANVAS, CANVAS, dtype=images.dtype)
    canvas[:, :, :DIGIT, :DIGIT] = images
    right = canvas[:, :, RIGHT_OFFSET : RIGHT_OFFSET + DIGIT, RIGHT_OFFSET : RIGHT_OFFSET + DIGIT]
    torch.maximum(right, images[partners], out=right)
    index = torch.tensor(NEAREST_INDEX)
    return canvas[:, :, index][:, :, :, index].contiguous()


class MultiMNISTDataset(MultiTaskImageDataset):
    """A ``MultiTaskImageDataset`` of Multi-MNIST images, labels ``(N, 2)`` (left, right),
    with ``partners`` ``(N,)``: the source image of each sample's right digit."""

    def __init__(
        self, images: Tensor, targets: Tensor, mean: Sequence[float], std: Sequence[float], partners: Tensor
    ) -> None:
        super().__init__(images, targets, mean, std)
        self.partners = partners


class MultiMNIST(MultiTaskDataModule):
    """Multi-MNIST (or Multi-Fashion-MNIST, Multi-Digits) for guided learning: 28x28 images
    of two overlaid digits, labels ``(N, 2)``, two tasks (0: left, 1: right).

    Splits: train = the source's training images ``[0, train_size)`` with partners in
    that range, val = the rest of the source's training split (partners there; none when
    nothing is left), test = the source's test split with test partners (MNIST: 50,000 /
    10,000 / 10,000; Multi-Digits: 1,438 / none / 359).

    Batches as every ``MultiTaskDataModule``'s: training ``(x, labels, task)``, each
    sample's task drawn per epoch from ``(seed, epoch)``; evaluation batches carry task 0.

    Args:
        source: ``"mnist"``, ``"fashion_mnist"`` (the IDX files, found as by those
            DataModules) or ``"digits"`` (sklearn's digits upscaled: nothing to download).
        train_size: images of the source's training split used for training (50,000, the
            paper's); the rest is the validation split.
        generator_seed: seed of the right-digit partners.
        **kwargs: see ``VisionDataModule`` (``val_fraction`` is replaced by ``train_size``).
    """

    name = "Multi-MNIST"
    num_classes = 10
    classes = MNIST.classes
    num_tasks = 2
    input_shape = (1, 28, 28)
    mean = STATISTICS["mnist"][:1]
    std = STATISTICS["mnist"][1:]

    def __init__(self, source: Source = "mnist", train_size: int = 50_000, generator_seed: int = 0, **kwargs: Any):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
        if train_size < 1:
            raise ValueError(f"train_size must be positive, got {train_size}")
        super().__init__(**kwargs)
        self.source = source
        self.train_size = train_size
        self.generator_seed = generator_seed
        self.mean, self.std = STATISTICS[source][:1], STATISTICS[source][1:]
        self.source_data = SOURCES[source](
            data_dir=self.data_dir, download=self.download, download_timeout=self.download_timeout
        )
        self.name = f"Multi-{self.source_data.name}"
        self.classes = self.source_data.classes

    def prepare_data(self) -> None:
        """The source's files (downloaded if asked), or its one clear error."""
        self.source_data.prepare_data()

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """The source's split as 28x28 uint8 images ``(N, 1, 28, 28)`` and labels ``(N,)``."""
        images, labels = self.source_data.load_split(train)
        return (upscale_digits(images) if self.source == "digits" else images), labels

    def generate(self, images: Tensor, labels: Tensor, offset: int) -> MultiMNISTDataset:
        """The Multi-MNIST images of one split range, partners drawn with ``generator_seed
        + offset`` (a different stream per range)."""
        generator = torch.Generator().manual_seed(self.generator_seed + offset)
        partners = torch.randint(len(images), (len(images),), generator=generator)
        combined = self.preprocessing().pad_images(overlay_pairs(images, partners))
        targets = torch.stack([labels, labels[partners]], dim=1)
        return MultiMNISTDataset(combined, targets, self.mean, self.std, partners)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = self.load_split(train=True)
            cut = min(self.train_size, len(images))
            self.train_set = self.generate(images[:cut], labels[:cut], 0)
            self.val_set = self.generate(images[cut:], labels[cut:], 1) if cut < len(images) else None
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.generate(*self.load_split(train=False), 2)

    def val_dataloader(self) -> DataLoader | list:  # type: ignore[override]
        """Validation batches; none (an empty list) when the training split is all used."""
        return [] if self.val_set is None else super().val_dataloader()
