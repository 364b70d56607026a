"""Architectures built once from two-stream layers and shared by every algorithm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

from torch import Tensor, nn

from lit_bioplaus.nn.layers import (
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLayer,
    TwoStreamLinear,
    WeightedTwoStreamLayer,
    WeightMode,
)

Activation = Literal["relu", "elu", "tanh", "sigmoid", "gelu", "leaky_relu"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by name (one of ``Activation``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class TwoStreamNetwork(nn.Module):
    """A stack of two-stream layers with an activation after chosen layers.

    The bottom-up stream is ``h_l = act_l(f_l(h_{l-1}))`` with ``h_0 = x``; the last
    layer is the prediction head (linear output, no activation). The top-down
    stream runs the layers' ``down`` maps in reverse order.

    Args:
        layers: the two-stream layers, bottom to top; the last one is the head.
        activated: per layer, whether the activation follows it.
        activation: name of the bottom-up activation.
    """

    def __init__(self, layers: Sequence[TwoStreamLayer], activated: Sequence[bool], activation: Activation) -> None:
        super().__init__()
        if len(layers) != len(activated):
            raise ValueError("layers and activated must have the same length")
        self.layers = nn.ModuleList(layers)
        self.activated: tuple[bool, ...] = tuple(activated)
        self.activation = make_activation(activation)

    @property
    def head(self) -> TwoStreamLayer:
        """The prediction head ``H_pred`` (last layer)."""
        return self.layers[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Bottom-up pass: ``(N, *input_shape) -> (N, num_outputs)`` logits."""
        for layer, activated in zip(self.layers, self.activated, strict=True):
            x = layer.up(x)
            if activated:
                x = self.activation(x)
        return x

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        """Ungated top-down pass: ``(N, num_outputs) -> (N, *input_shape)``.

        The activation follows each layer whose bottom-up mirror is activated,
        applied on the layer's output side before its ``down`` map.
        """
        for layer, activated in zip(reversed(self.layers), reversed(self.activated), strict=True):
            if activated:
                y = self.activation(y)
            y = layer.down(y, use_bias=use_bias)
        return y

    def weighted_layers(self) -> list[WeightedTwoStreamLayer]:
        """The linear and conv layers, bottom to top (inside blocks too)."""
        return [module for module in self.modules() if isinstance(module, WeightedTwoStreamLayer)]


class MLP(TwoStreamNetwork):
    """Multi-layer perceptron ``prod(input_shape) - hidden[0] - ... - num_classes``.

    Args:
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)``; flattened first.
        num_classes: number of outputs.
        hidden: widths of the hidden layers, e.g. ``[500]`` or ``[256] * 5``.
        activation: hidden activation.
        bias: whether layers have biases.
        weight_mode: feedback weight mode of every layer (see ``lit_bioplaus.nn.layers``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (500,),
        activation: Activation = "relu",
        bias: bool = True,
        weight_mode: WeightMode = "shared",
    ) -> None:
        widths = [math.prod(input_shape), *hidden, num_classes]
        layers: list[TwoStreamLayer] = [TwoStreamFlatten(tuple(input_shape))]
        layers += [TwoStreamLinear(w_in, w_out, bias=bias, weight_mode=weight_mode) for w_in, w_out in pairwise(widths)]
        activated = [False] + [True] * len(hidden) + [False]
        super().__init__(layers, activated, activation)


class ConvNet(TwoStreamNetwork):
    """Small convolutional network: strided convolutions (no pooling), then an MLP head.

    ``conv(channels[0]) - act - ... - conv(channels[-1]) - act - flatten - hidden... - num_classes``.
    Strided convolutions stand in for pooling, as in the Counter-Hebb paper, so
    every stage has an exact two-stream mirror.

    Args:
        input_shape: ``(C, H, W)`` of one input sample.
        num_classes: number of outputs.
        channels: output channels of each convolution.
        kernel_size, stride, padding: geometry shared by every convolution.
        hidden: widths of fully connected hidden layers after the convolutions.
        activation, bias, weight_mode: as for ``MLP``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        hidden: Sequence[int] = (),
        activation: Activation = "relu",
        bias: bool = True,
        weight_mode: WeightMode = "shared",
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ConvNet needs input_shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        layers: list[TwoStreamLayer] = []
        for out_channels in channels:
            conv = TwoStreamConv2d(
                c,
                out_channels,
                kernel_size,
                stride,
                padding,
                bias=bias,
                weight_mode=weight_mode,
                input_size=(h, w),
            )
            layers.append(conv)
            c, (h, w) = out_channels, conv.output_size
        layers.append(TwoStreamFlatten((c, h, w)))
        widths = [c * h * w, *hidden, num_classes]
        layers += [TwoStreamLinear(w_in, w_out, bias=bias, weight_mode=weight_mode) for w_in, w_out in pairwise(widths)]
        activated = [True] * len(channels) + [False] + [True] * len(hidden) + [False]
        super().__init__(layers, activated, activation)
