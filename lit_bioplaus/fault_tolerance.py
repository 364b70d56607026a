"""Fault tolerance: checkpoints that never replace a good file by a bad one, a resumable
checkpoint when the job is told to stop, and no process left behind when a run fails.

* ``AtomicCheckpointIO``: every checkpoint is written to a temporary file in its own
  folder, flushed to disk and renamed over the old one, so a kill, a full disk or a
  crash mid-save leaves the previous file intact (Lightning's default writes into the
  destination, or copies across file systems from the system's temporary folder).
* ``PreemptionCheckpoint``: on SIGTERM (a cluster's preemption, ``kill``), Lightning stops
  the loops; this callback then saves ``sigterm.ckpt``, from which ``fit --ckpt_path``
  resumes exactly, and the CLI exits with status 143 instead of 0.
* ``StopPeersOnFailure``: when a DDP run fails (a peer stopped answering within the
  collective timeout, an error on the main process), the other processes are stopped
  too instead of running or hanging on (Lightning kills them on Ctrl-C / SIGTERM only).
* ``DivergenceError``: what the rules raise when a loss or the weights stop being finite
  (``BioplausModule`` checks on the logging interval and before every save), so no
  non-finite checkpoint is ever written.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_bioplaus.io import atomic_write, stale_temporaries

SIGTERM_CHECKPOINT = "sigterm.ckpt"
SIGTERM_EXIT_STATUS = 143  # 128 + SIGTERM, what a shell reports for a job killed by it


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or weights: stopped before anything is saved."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (temporary file in the
    checkpoint's folder, fsync, rename); remote paths are saved as Lightning does."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        for stale in stale_temporaries(path):  # left by a run killed mid-save
            stale.unlink(missing_ok=True)
        atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM, save a resumable checkpoint (``sigterm.ckpt``, atomically) in the
    checkpoint folder of the run (the ``ModelCheckpoint``'s, else ``default_root_dir``)."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or trainer.default_root_dir
        path = Path(folder) / SIGTERM_CHECKPOINT
        try:
            trainer.save_checkpoint(path, weights_only=False)
        except Exception as err:  # keep the other on_exception hooks running (StopPeersOnFailure)
            rank_zero_warn(f"SIGTERM: no checkpoint saved ({err})")
            return
        self.path = path
        rank_zero_info(f"SIGTERM: saved {path}; resume with --ckpt_path {path}")


class StopPeersOnFailure(L.Callback):
    """On any failure of the process that launched the DDP processes, kill the others."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs:
            launcher.kill(signal.SIGKILL)
