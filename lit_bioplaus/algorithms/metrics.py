"""The epoch's training loss and metric, accumulated at the cost of a few tensor ops a step."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TrainingStatistics(Metric):
    """Mean training loss and metric of an epoch, as one ``torchmetrics.Metric``.

    Every ``update`` adds ``(loss * N, hits)`` to one ``(2,)`` sum and ``(N, M)`` to one
    ``(2,)`` count (a handful of small tensor ops and no host-device sync, where a
    ``MeanMetric`` plus a ``MulticlassAccuracy`` cost about three times as much per step);
    ``compute`` returns

    * the loss ``sum_b loss_b N_b / sum_b N_b`` (the sample-weighted mean, as
      ``MeanMetric(weight=N)`` gives it), and
    * the metric ``sum_b hits_b / sum_b M_b``: for ``classification`` the micro accuracy
      (``hits`` = samples whose ``scores`` argmax is the label, ``M = N``); for
      ``autoencoder`` the mean squared error (``hits`` = the summed squared error,
      ``M`` = the number of elements).

    Sums and counts are summed over DDP processes by ``compute``, like any torchmetrics
    state.

    Args:
        task: ``"classification"`` or ``"autoencoder"``.
    """

    full_state_update = False

    def __init__(self, task: str = "classification") -> None:
        super().__init__()
        self.task = task
        self.add_state("sums", torch.zeros(2), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(2), dist_reduce_fx="sum")

    def update(self, loss: Tensor, scores: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            loss: scalar batch-mean loss.
            scores: ``(N, C)`` class scores (classification) or ``(N, ...)`` outputs.
            target: ``(N,)`` labels, or outputs' targets of the shape of ``scores``.
        """
        batch = target.shape[0]
        if self.task == "classification":
            hits, elements = (scores.argmax(dim=-1) == target).sum(), batch
        else:
            hits, elements = (scores.float() - target.float()).square().sum(), target.numel()
        dtype = self.sums.dtype
        self.sums += torch.stack([loss.detach().to(dtype) * batch, hits.to(dtype)])
        self.counts += self.counts.new_tensor([batch, elements])

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(loss, metric)`` of the batches so far (NaN before the first)."""
        loss, metric = self.sums / self.counts
        return loss, metric
