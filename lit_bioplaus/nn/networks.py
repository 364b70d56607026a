"""Architectures built once from two-stream layers and shared by every algorithm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor, nn

from lit_bioplaus.nn.layers import (
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLayer,
    TwoStreamLinear,
    TwoStreamMaxPool2d,
    TwoStreamMirror,
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


def _batch_norm(layer: TwoStreamLayer) -> nn.Module:
    """Batch-norm over the channels of ``layer``'s upward output."""
    if isinstance(layer, TwoStreamMirror):
        return nn.BatchNorm2d(layer.layer.in_channels)
    if isinstance(layer, TwoStreamConv2d):
        return nn.BatchNorm2d(layer.out_channels)
    if isinstance(layer, TwoStreamLinear):
        return nn.BatchNorm1d(layer.out_features)
    raise ValueError(f"batch_norm needs a linear or conv layer before each activation, got {type(layer).__name__}")


class TwoStreamNetwork(nn.Module):
    """A stack of two-stream layers with an activation after chosen layers.

    The bottom-up stream is ``h_l = act(norm_l(f_l(h_{l-1})))`` for activated layers
    (``f_l(h_{l-1})`` otherwise) with ``h_0 = x``; the last layer is the prediction head.
    The top-down stream runs the layers' ``down`` maps in reverse order, applying the
    activation (and the stream's own norm) at the same points as the bottom-up stream.

    Args:
        layers: the two-stream layers, bottom to top; the last one is the head.
        activated: per layer, whether the activation follows it.
        activation: name of the activation.
        batch_norm: batch-normalise before every activation, with separate modules (and
            running statistics) for the two streams.
    """

    def __init__(
        self,
        layers: Sequence[TwoStreamLayer],
        activated: Sequence[bool],
        activation: Activation,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(activated):
            raise ValueError("layers and activated must have the same length")
        self.layers = nn.ModuleList(layers)
        self.activated: tuple[bool, ...] = tuple(activated)
        self.activation = make_activation(activation)
        self.up_norms = self.down_norms = None
        if batch_norm:
            pairs = list(zip(layers, self.activated, strict=True))
            self.up_norms, self.down_norms = (
                nn.ModuleList(_batch_norm(layer) if on else nn.Identity() for layer, on in pairs) for _ in range(2)
            )

    def up_activation(self, index: int, x: Tensor) -> Tensor:
        """The upward stream at the output of layer ``index``: ``act(norm(x))`` if activated."""
        if not self.activated[index]:
            return x
        return self.activation(x if self.up_norms is None else self.up_norms[index](x))

    def down_activation(self, index: int, y: Tensor) -> Tensor:
        """The downward stream at the output of layer ``index``, with its own norm."""
        if not self.activated[index]:
            return y
        return self.activation(y if self.down_norms is None else self.down_norms[index](y))

    def up_parameters(self) -> list[nn.Parameter]:
        """Parameters of the upward (forward) stream, norms included."""
        params = [p for layer in self.layers for p in layer.up_parameters()]
        return params + ([] if self.up_norms is None else list(self.up_norms.parameters()))

    def down_parameters(self) -> list[nn.Parameter]:
        """Parameters used only by the downward (feedback) stream, norms included."""
        params = [p for layer in self.layers for p in layer.down_parameters()]
        return params + ([] if self.down_norms is None else list(self.down_norms.parameters()))

    @property
    def head(self) -> TwoStreamLayer:
        """The prediction head ``H_pred`` (last layer)."""
        return self.layers[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Bottom-up pass: ``(N, *input_shape) -> (N, num_outputs)`` logits."""
        for index, layer in enumerate(self.layers):
            x = self.up_activation(index, layer.up(x))
        return x

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        """Ungated top-down pass: ``(N, num_outputs) -> (N, *input_shape)``.

        The activation follows each layer whose bottom-up mirror is activated,
        applied on the layer's output side before its ``down`` map.
        """
        for index in reversed(range(len(self.layers))):
            y = self.layers[index].down(self.down_activation(index, y), use_bias=use_bias)
        return y

    def weighted_layers(self) -> list[WeightedTwoStreamLayer]:
        """The linear and conv layers, bottom to top (inside blocks too)."""
        return [module for module in self.modules() if isinstance(module, WeightedTwoStreamLayer)]

    def reset_feedback_parameters(self) -> None:
        """Re-initialise every separate feedback map as a layer of its own (see
        ``WeightedTwoStreamLayer.reset_feedback_parameters``); rules with a trained
        feedback network call this once the network is built."""
        for layer in self.weighted_layers():
            layer.reset_feedback_parameters()


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


class PooledConvNet(TwoStreamNetwork):
    """The Counter-Current paper's CIFAR CNN: 3x3 stride-1 convolutions, each followed by
    2x2 max-pooling and the activation, then a linear classifier.

    ``conv(channels[0]) - pool - act - ... - conv(channels[-1]) - pool - act - flatten - linear``.
    Downward: the linear map's feedback, then per stage nearest x2 upsampling and a
    3x3 convolution (``TwoStreamConv2d(feedback="upsample")`` after ``TwoStreamMaxPool2d``).
    (Pooling before the activation equals the paper's activation-then-pool for monotone
    activations, and puts the activation at the pooled point both streams share.)

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` must stay >= 1 after the poolings.
        num_classes: number of outputs.
        channels: output channels of each convolution (default: the paper's five).
        activation, bias, weight_mode: as for ``MLP``; Counter-Current learning needs
            separate feedback weights (``asymmetric``, the default).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (128, 128, 256, 256, 512),
        activation: Activation = "elu",
        bias: bool = False,
        weight_mode: WeightMode = "asymmetric",
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"PooledConvNet needs input_shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        layers: list[TwoStreamLayer] = []
        for out_channels in channels:
            if min(h, w) < 2:
                raise ValueError(f"input {tuple(input_shape)} is too small for {len(channels)} 2x2 poolings")
            layers.append(
                TwoStreamConv2d(
                    c, out_channels, 3, 1, 1, bias=bias, weight_mode=weight_mode, input_size=(h, w), feedback="upsample"
                )
            )
            pool = TwoStreamMaxPool2d((h, w))
            layers.append(pool)
            c, (h, w) = out_channels, pool.output_size
        head = TwoStreamLinear(c * h * w, num_classes, bias=bias, weight_mode=weight_mode)
        layers += [TwoStreamFlatten((c, h, w)), head]
        activated = [False, True] * len(channels) + [False, False]
        super().__init__(layers, activated, activation)


class ConvAutoencoder(TwoStreamNetwork):
    """The Counter-Current paper's convolutional autoencoder: ``len(channels)`` stride-2
    3x3 convolutions down, the mirrored upsample-and-convolve layers back up, batch-norm
    and the activation after every projection but the last. Output shape = input shape.

    Encoder layer: ``TwoStreamConv2d(stride=2, feedback="upsample")`` (forward: strided
    conv; feedback: upsample then conv). Decoder layer: the same layer mirrored
    (``TwoStreamMirror``: forward upsamples then convolves, feedback is a strided conv).

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2 ** len(channels)``.
        num_classes: ignored (the output is an image); accepted so every network is
            built from ``(input_shape, num_classes)``.
        channels: encoder widths, bottom to top (default: the paper's 128-256-1024-2048).
        activation: activation after every projection but the last.
        batch_norm: batch-norm (per stream) before every activation.
        weight_mode: ``asymmetric`` or ``symmetric`` (separate feedback weights).
        upsample_init_scale: factor on the initial weights of every upsample-and-convolve
            map (the decoder's forward maps, the encoder's feedback maps), applied again by
            ``reset_feedback_parameters``. The official STL-10 recipe uses ``1e-3`` (with a
            gradient-norm clip of 0.2): behind a batch-norm such a map computes the same
            function at any scale while its gradient grows as ``1 / scale``, so its first
            updates overwrite the random start; the two maps that produce an image (no
            batch-norm) start near zero. Counter-Current learning of the autoencoder
            needs it (``benchmarks/ae_init.py``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 0,
        channels: Sequence[int] = (128, 256, 1024, 2048),
        activation: Activation = "relu",
        batch_norm: bool = True,
        weight_mode: WeightMode = "asymmetric",
        upsample_init_scale: float = 1.0,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ConvAutoencoder needs input_shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        if h % 2 ** len(channels) or w % 2 ** len(channels):
            raise ValueError(f"ConvAutoencoder needs H and W divisible by {2 ** len(channels)}, got {(h, w)}")
        encoder: list[TwoStreamConv2d] = []
        for out_channels in channels:
            conv = TwoStreamConv2d(
                c, out_channels, 3, 2, 1, bias=False, weight_mode=weight_mode, input_size=(h, w), feedback="upsample"
            )
            encoder.append(conv)
            c, (h, w) = out_channels, conv.output_size
        mirrored = [
            TwoStreamMirror(
                TwoStreamConv2d(
                    layer.in_channels,
                    layer.out_channels,
                    3,
                    2,
                    1,
                    bias=False,
                    weight_mode=weight_mode,
                    input_size=layer.input_size,
                    feedback="upsample",
                )
            )
            for layer in reversed(encoder)
        ]
        layers: list[TwoStreamLayer] = [*encoder, *mirrored]
        activated = [True] * (len(layers) - 1) + [False]
        super().__init__(layers, activated, activation, batch_norm=batch_norm)
        self.upsample_init_scale = upsample_init_scale
        self._scale_upsampling_maps()

    def reset_feedback_parameters(self) -> None:
        super().reset_feedback_parameters()
        self._scale_upsampling_maps()

    @torch.no_grad()
    def _scale_upsampling_maps(self) -> None:
        """Multiply the upsample-and-convolve weights (every layer's feedback weight:
        the decoder layers are mirrored) by ``upsample_init_scale``."""
        if self.upsample_init_scale != 1.0:
            for layer in self.weighted_layers():
                layer.feedback_weight.mul_(self.upsample_init_scale)
