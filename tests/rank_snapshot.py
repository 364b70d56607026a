"""A callback the multi-process tests load by class path (``rank_snapshot.SaveRankParameters``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from safetensors.torch import save_file


class SaveRankParameters(L.Callback):
    """Write every rank's parameters to ``directory/rank{R}[_initial].safetensors`` and its
    buffers (batch-norm running statistics, ...) to ``rank{R}[_initial]_buffers.safetensors``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _save(self, trainer: L.Trainer, module: L.LightningModule, suffix: str) -> None:
        state = {name: p.detach().cpu().contiguous() for name, p in module.named_parameters()}
        save_file(state, self.directory / f"rank{trainer.global_rank}{suffix}.safetensors")
        buffers = {name: b.detach().cpu().contiguous() for name, b in module.named_buffers()}
        save_file(buffers, self.directory / f"rank{trainer.global_rank}{suffix}_buffers.safetensors")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "_initial")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "")
