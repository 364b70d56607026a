"""The epoch's training loss and metric, accumulated at the cost of a few tensor ops a step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric


class TrainingStatistics(Metric):
    """Mean training loss and metric of an epoch, as one ``torchmetrics.Metric``.

    Every ``update`` adds ``loss * N`` to a float sum, ``hits`` to a sum (an integer count
    for classification), and ``N`` and ``M`` to two integer counts: a handful of small tensor
    ops and no host-device sync, where a ``MeanMetric`` plus a ``MulticlassAccuracy`` cost
    about three times as much per step. Counts are int64 and the sums stay float32 when the
    module is cast to half precision (``bf16-true`` / ``16-true``): only moves reach them.
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
        hits = torch.zeros((), dtype=torch.int64 if task == "classification" else torch.float32)
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("hits", hits, dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("elements", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> Module:
        """Device moves reach every state; dtype casts leave the float sums alone."""
        kept = ("loss_sum", "hits")
        this = super()._apply(fn, exclude_state=(*kept, *exclude_state))
        device = fn(torch.zeros(())).device
        for key in kept:
            this._defaults[key] = this._defaults[key].to(device)
            setattr(this, key, getattr(this, key).to(device))
        return this

    def update(self, loss: Tensor, scores: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            loss: scalar batch-mean loss.
            scores: ``(N, C)`` class scores (classification) or ``(N, ...)`` outputs.
            target: ``(N,)`` labels, or outputs' targets of the shape of ``scores``.
        """
        batch = target.shape[0]
        if self.task == "classification":
            self.hits += (scores.argmax(dim=-1) == target).sum()
            self.elements += batch
        else:
            self.hits += (scores.float() - target.float()).square().sum().to(self.hits.dtype)
            self.elements += target.numel()
        self.loss_sum += loss.detach().to(self.loss_sum.dtype) * batch
        self.samples += batch

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(loss, metric)`` of the batches so far (NaN before the first), in float32."""
        loss = self.loss_sum.double() / self.samples
        metric = self.hits.double() / self.elements
        return loss.float(), metric.float()
