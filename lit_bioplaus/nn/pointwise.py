"""Pointwise two-stream modules: activations and per-stream batch-norm.

They sit in a network's one sequence of two-stream modules between the maps, so the
order of operations is the network itself (``TwoStreamNetwork``): slicing it keeps them,
printing it shows them, and every learning rule walks them the same way. Each says what
it does in each direction:

* ``up``: the bottom-up (forward) stream;
* ``down``: the top-down (feedback) stream run as a network of its own (Counter-Current
  learning's feedback network, the instruction pass of guided Counter-Hebb);
* ``gated_down(x, delta)``: the top-down value of an output-side error, gated by the
  bottom-up activity on input ``x`` (Counter-Hebb's TD pass).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lit_bioplaus.nn.layers import TwoStreamLayer

Activation = Literal["relu", "elu", "tanh", "sigmoid", "gelu", "leaky_relu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}

_POSITIVE_WHERE_INPUT_POSITIVE = frozenset({"relu", "elu", "tanh", "gelu", "leaky_relu"})
"""Activations with ``act(x) > 0`` exactly where ``x > 0`` (so the GaLU gate is ``[x > 0]``)."""


def make_activation(name: str) -> nn.Module:
    """Activation module by name (one of ``Activation``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class TwoStreamActivation(TwoStreamLayer):
    """The activation of both streams at one point of the network.

    ``up(x) = act(x)``; ``down(y) = act(y)`` (the feedback network applies the same
    activation after its map, e.g. Counter-Current learning's ``b = act(V b')``);
    ``gated_down(x, delta) = delta * [act(x) > 0]``: GaLU, the TD error passes where
    the BU neuron is active (with ReLU this is the exact backprop of the activation).

    Args:
        name: one of ``Activation``.
    """

    def __init__(self, name: Activation = "relu") -> None:
        super().__init__()
        self.name = name
        self.activation = make_activation(name)

    def up(self, x: Tensor) -> Tensor:
        return self.activation(x)

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return self.activation(y)

    def active(self, x: Tensor) -> Tensor:
        """Boolean mask ``[act(x) > 0]`` of the BU neurons active on input ``x``."""
        return x > 0 if self.name in _POSITIVE_WHERE_INPUT_POSITIVE else self.activation(x) > 0

    def gated_down(self, x: Tensor, delta: Tensor) -> Tensor:
        if self.name in _POSITIVE_WHERE_INPUT_POSITIVE and x.dtype == delta.dtype:
            return torch.ops.aten.threshold_backward(delta, x, 0)  # delta * [x > 0], one fused kernel
        return delta * self.active(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


Stream = Literal["up", "down"]


class TwoStreamBatchNorm(TwoStreamLayer):
    """Batch-norm of one stream at one point; the other stream passes unchanged.

    Per-stream batch-norm is a pair of these, one per stream, each with its own affine
    parameters and running statistics, placed where that stream normalises: a layer
    ``conv - BN(up) - act - BN(down)`` normalises the BU stream before its activation
    and the TD stream right after the map above, before the same activation (the
    feedback network's ``b = act(BN(V b'))``).

    Counter-Hebb's TD pass through batch-norm is not implemented yet, so
    ``gated_down`` refuses (``supports_gated_down`` is False).

    Args:
        num_features: channels (``(N, C, H, W)`` input) or features (``(N, C)``).
        stream: ``"up"`` or ``"down"``, the stream this module normalises.
        spatial: ``BatchNorm2d`` (True) or ``BatchNorm1d`` (False).
    """

    supports_gated_down = False

    def __init__(self, num_features: int, stream: Stream, spatial: bool = True) -> None:
        super().__init__()
        if stream not in ("up", "down"):
            raise ValueError(f"stream must be 'up' or 'down', got {stream!r}")
        self.stream: Stream = stream
        self.norm = nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)

    def up(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.stream == "up" else x

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return self.norm(y) if self.stream == "down" else y

    def up_parameters(self) -> list[nn.Parameter]:
        return list(self.norm.parameters()) if self.stream == "up" else []

    def down_parameters(self) -> list[nn.Parameter]:
        return list(self.norm.parameters()) if self.stream == "down" else []

    def gated_down(self, x: Tensor, delta: Tensor) -> Tensor:
        raise ValueError("Counter-Hebb's top-down pass through batch-norm is not supported yet")

    def extra_repr(self) -> str:
        return f"stream={self.stream}"


__all__ = ["Activation", "TwoStreamActivation", "TwoStreamBatchNorm", "make_activation"]
