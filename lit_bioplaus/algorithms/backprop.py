"""Backpropagation baseline: the bottom-up network trained by autograd."""

from __future__ import annotations

from torch import Tensor

from lit_bioplaus.algorithms.base import BioplausModule


class BackProp(BioplausModule):
    """Error backpropagation on the bottom-up stream of a two-stream network.

    The reference every other rule is compared with: same network, same data,
    same optimizer, same training step; the objective is the loss itself, so the
    update is ``dL/dW`` from autograd.
    """

    def training_objective(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self(x)
        loss = self.loss(logits, target)
        return loss, loss.detach(), logits
