"""What the guided (instructed) DataModules share: one label per task, and each training
sample's task drawn per epoch (ALGORITHMS.md section 4.1, step 7).

* :class:`MultiTaskImageDataset`: images with labels ``(N, T)``; its batches carry the
  samples' positions in the split, ``rows``.
* :class:`MultiTaskDataModule`: turns ``rows`` into tasks in ``on_before_batch_transfer``,
  so training batches are ``(x, labels (B, T), task (B,))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_bioplaus.data.base import InMemoryImageDataset, VisionDataModule

TASK_SEED_STRIDE = 1_000_003
"""The task generator of epoch ``e`` is seeded with ``seed * TASK_SEED_STRIDE + e``."""


class MultiTaskImageDataset(InMemoryImageDataset):
    """An ``InMemoryImageDataset`` with one label per task: ``targets`` of shape ``(N, T)``.

    Batches are ``(images (B, C, H, W) float32, labels (B, T) int64, rows (B,) int64)``,
    ``rows`` being the samples' positions in the split (the DataModule turns them into
    tasks).

    Args:
        images: ``(N, C, H, W)`` uint8 images.
        targets: ``(N, T)`` labels, column ``t`` the label under task ``t``.
        mean: per-channel mean of the images scaled to ``[0, 1]``, length ``C``.
        std: per-channel standard deviation, length ``C``.
    """

    def __init__(self, images: Tensor, targets: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        if targets.ndim != 2:
            raise ValueError(f"targets must be (N, T), one label per task, got shape {tuple(targets.shape)}")
        super().__init__(images, targets[:, 0], mean, std)
        self.targets = targets.long()

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        images, labels = super().__getitems__(indices)
        return images, labels, self.indices[torch.as_tensor(indices, dtype=torch.long)]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        """One sample: image ``(C, H, W)``, labels ``(T,)``, its position ``()``."""
        images, labels, rows = self.__getitems__([index])
        return images[0], labels[0], rows[0]


class MultiTaskDataModule(VisionDataModule):
    """Base class of the guided DataModules: ``num_tasks`` labels per image, held in
    :class:`MultiTaskImageDataset` splits.

    Training batches are ``(x, labels (B, T), task (B,))``: each sample's task is drawn
    uniformly from ``[0, T)`` every epoch, from a generator seeded by ``(seed, epoch)`` over
    the training split's positions, so it does not depend on the sampler, the number of
    DDP processes or a resume. Evaluation and predict batches carry task 0 in that field
    (unused: every image is evaluated under every task).

    Args:
        **kwargs: see ``VisionDataModule``.
    """

    train_set: MultiTaskImageDataset | None
    val_set: MultiTaskImageDataset | None
    test_set: MultiTaskImageDataset | None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._task_table: tuple[int, Tensor] | None = None

    def tasks(self, rows: Tensor, epoch: int) -> Tensor:
        """``(B,)`` int64 tasks of the training samples at ``rows`` (positions in the
        training split) for ``epoch``: ``table[rows]``, ``table`` ``(N,)`` drawn uniformly
        from ``[0, T)`` by a generator seeded with ``seed * TASK_SEED_STRIDE + epoch``."""
        if self.train_set is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not loaded the training split yet")
        if self._task_table is None or self._task_table[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * TASK_SEED_STRIDE + epoch)
            table = torch.randint(self.num_tasks, (len(self.train_set.targets),), generator=generator)
            self._task_table = (epoch, table)
        return self._task_table[1][rows.cpu()].to(rows.device)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn each training batch's ``rows`` into the samples' tasks of the current epoch
        (task 0 in evaluation batches, where it is not used)."""
        images, labels, rows = batch
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return images, labels, torch.zeros_like(rows)
        return images, labels, self.tasks(rows, trainer.current_epoch)
