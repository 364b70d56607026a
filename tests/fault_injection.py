"""Callbacks that inject faults into a run (used by tests/test_reliability.py through
``--trainer.callbacks+=tests.fault_injection.NAME``)."""

from __future__ import annotations

import math
import os
import signal
import time

import lightning as L
import torch


class PoisonWeights(L.Callback):
    """After global step ``at_step``, set every weight to NaN (a run that diverged)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for param in pl_module.parameters():
                    param.fill_(math.nan)


class TerminateAt(L.Callback):
    """After global step ``at_step``, send this process SIGTERM (a cluster's preemption)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGTERM)


class StallRank(L.Callback):
    """At global step ``at_step``, process ``rank`` stops answering for ``seconds`` (a hung
    DDP peer: a stuck file system, a dead GPU)."""

    def __init__(self, rank: int, at_step: int, seconds: float) -> None:
        self.rank, self.at_step, self.seconds = rank, at_step, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.at_step:
            time.sleep(self.seconds)
