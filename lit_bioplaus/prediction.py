"""Keeping what ``predict`` returns: a callback that writes it to the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lit_bioplaus.io import atomic_save_file


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict`` returns to ``predictions.safetensors`` in the run folder
    (``trainer.log_dir``, else ``default_root_dir``; ``predictions_rank{r}`` per DDP
    process), atomically: ``predictions``, e.g. ``(N, C)`` class probabilities or
    ``(N, T, C)`` under every task of a guided model, and ``indices`` ``(N,)``, each row's
    sample in the predict data set (under DDP every process writes its share)."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        if len(trainer.predict_dataloaders or []) > 1:
            raise ValueError("PredictionWriter writes one predict dataloader's predictions, got several")
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else batch_indices
        if not batches:
            return
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        tensors = {
            "predictions": torch.cat([batch.detach().cpu() for batch in batches]).contiguous(),
            "indices": torch.tensor([i for batch in indices for i in batch], dtype=torch.long),
        }
        self.path = atomic_save_file(tensors, folder / f"predictions{suffix}.safetensors")
        rank_zero_info(f"predictions {tuple(tensors['predictions'].shape)} written to {self.path}")
