"""Keeping what ``predict`` returns: a callback that writes it to the run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lit_bioplaus.io import atomic_save_file


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict`` returns to ``predictions.safetensors`` in the run folder
    (``trainer.log_dir``, else ``default_root_dir``; ``predictions_rank{r}`` per DDP
    process), atomically:

    * ``predictions``: e.g. ``(N, C)`` class probabilities, ``(N, T, C)`` under every task
      of a guided model, or an autoencoder's ``(N, C, H, W)`` reconstructions;
    * ``indices`` ``(N,)`` int64: each row's sample in the predict data set (under DDP
      every process writes its share);
    * ``classes`` ``(N,)`` or ``(N, T)`` int64, for classification (a module whose
      ``task`` is ``"classification"``): the most probable class, ``predictions.argmax(-1)``.

    When the DataModule names its samples (a ``files`` list, as ``ImageFiles`` does), the
    file's metadata ``files`` is that list as JSON: row ``i`` is ``files[indices[i]]``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
        if len(trainer.num_predict_batches) > 1:  # one entry per dataloader
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
        if getattr(pl_module, "task", None) == "classification":
            tensors["classes"] = tensors["predictions"].argmax(dim=-1)
        files = getattr(trainer.datamodule, "files", None)
        metadata = {"files": json.dumps(list(files))} if files else None
        self.path = atomic_save_file(tensors, folder / f"predictions{suffix}.safetensors", metadata)
        rank_zero_info(f"predictions {tuple(tensors['predictions'].shape)} written to {self.path}")
