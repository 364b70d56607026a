"""Backpropagation baseline: the bottom-up network trained by autograd."""

from __future__ import annotations

from torch import Tensor

from lit_bioplaus.algorithms.base import BioplausModule


class BackProp(BioplausModule):
    """Error backpropagation on the bottom-up stream of a two-stream network.

    The reference every other rule is compared with: same network, same data,
    same optimizer; the gradient is ``dL/dW`` from autograd
    (``automatic_optimization``, so gradient clipping and accumulation work as usual).
    """

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, target = batch
        logits = self(x)
        loss = self.loss(logits, target)
        self.log_train_metrics(loss, logits, target)
        return loss
