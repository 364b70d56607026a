"""A callback the multi-process tests load by class path (``rank_snapshot.SaveRankParameters``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from safetensors.torch import save_file


class SaveRankParameters(L.Callback):
    """Write every rank's parameters to ``directory/rank{R}[_initial].safetensors``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def _save(self, trainer: L.Trainer, module: L.LightningModule, suffix: str) -> None:
        state = {name: p.detach().cpu().contiguous() for name, p in module.named_parameters()}
        save_file(state, self.directory / f"rank{trainer.global_rank}{suffix}.safetensors")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "_initial")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "")
