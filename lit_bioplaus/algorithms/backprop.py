"""Backpropagation baseline: the bottom-up network trained by autograd."""

from __future__ import annotations

from torch import Tensor

from lit_bioplaus.algorithms.base import BioplausModule, NetworkFactory
from lit_bioplaus.nn import TwoStreamNetwork


class BackProp(BioplausModule):
    """Error backpropagation on the bottom-up stream of a two-stream network.

    The reference every other rule is compared with: same network, same data,
    same optimizer, same training step; the objective is the loss itself, so the
    update is ``dL/dW`` from autograd. Feedback-only parameters (separate feedback
    weights, feedback-stream norms) are never used and are frozen.
    """

    def build_network(self, network: NetworkFactory) -> TwoStreamNetwork:
        built = super().build_network(network)
        for param in built.down_parameters():
            param.requires_grad_(False)
        return built

    def training_objective(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self(x)
        loss = self.loss(logits, target)
        return loss, loss.detach(), logits
