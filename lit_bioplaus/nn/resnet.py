"""Two-stream residual networks: the basic residual block and ResNet-18 (ALGORITHMS.md 4.3).

Every map is a two-stream layer and every normalisation a per-stream batch-norm pair, so
the same network trains by backprop, (guided) Counter-Hebb learning and feedback alignment.
Per block, the official Counter-Hebb layout:

* branch: ``BN_td(C_in) - conv3x3(stride) - BN_bu - act - BN_td - conv3x3 - BN_bu``;
* shortcut: ``BN_td(C_in) - conv1x1(stride) - BN_bu`` when the stride or the width
  changes, else the identity;
* the activation after the sum is the network's, outside the block.

(``BN_td`` is the TD stream's norm, applied after the TD map above it; ``BN_bu`` the BU
stream's.) The gate points of guided learning are the activations: the stem's, each
block's inner one and each block's output (after the sum); never the convolutions before
the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from lit_bioplaus.nn.layers import (
    FeedbackInit,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamGlobalAvgPool2d,
    TwoStreamLayer,
    TwoStreamLinear,
    TwoStreamMaxPool2d,
    WeightMode,
)
from lit_bioplaus.nn.networks import Decoder, TwoStreamNetwork, TwoStreamResidual
from lit_bioplaus.nn.pointwise import Activation, TwoStreamActivation, TwoStreamBatchNorm


def _norm(features: int, stream: Literal["up", "down"], batch_norm: bool) -> list[TwoStreamLayer]:
    return [TwoStreamBatchNorm(features, stream)] if batch_norm else []


class TwoStreamResidualBlock(TwoStreamResidual):
    """ResNet's basic block as a two-stream residual block (layout in the module docstring):
    ``up(x) = BN(conv2(act(BN(conv1(x))))) + shortcut(x)``, ``(N, C_in, H, W) ->
    (N, C_out, H', W')`` with ``H' = ceil(H / stride)``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out`` (default ``C_in``).
        stride: stride of the first convolution and of the 1x1 shortcut.
        input_size: ``(H, W)`` of the input (needed for the TD maps of strided convolutions
            on odd sizes; networks pass it).
        bias: convolution biases (ResNets have none: batch-norm follows).
        weight_mode: feedback weight mode of every convolution.
        batch_norm: per-stream batch-norm (False: the plain residual block).
        activation: the inner activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        input_size: tuple[int, int] | None = None,
        bias: bool = True,
        weight_mode: WeightMode = "shared",
        batch_norm: bool = False,
        activation: Activation = "relu",
    ) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        conv1 = TwoStreamConv2d(
            in_channels, out_channels, 3, stride, 1, bias=bias, weight_mode=weight_mode, input_size=input_size
        )
        inner_size = None if input_size is None else conv1.output_size
        conv2 = TwoStreamConv2d(
            out_channels, out_channels, 3, 1, 1, bias=bias, weight_mode=weight_mode, input_size=inner_size
        )
        branch = [
            *_norm(in_channels, "down", batch_norm),
            conv1,
            *_norm(out_channels, "up", batch_norm),
            TwoStreamActivation(activation),
            *_norm(out_channels, "down", batch_norm),
            conv2,
            *_norm(out_channels, "up", batch_norm),
        ]
        shortcut: list[TwoStreamLayer] = []
        if stride != 1 or in_channels != out_channels:
            projection = TwoStreamConv2d(
                in_channels, out_channels, 1, stride, 0, bias=bias, weight_mode=weight_mode, input_size=input_size
            )
            shortcut = [*_norm(in_channels, "down", batch_norm), projection, *_norm(out_channels, "up", batch_norm)]
        super().__init__(branch, shortcut)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.output_size = inner_size


ResNetStyle = Literal["cifar", "torchvision"]


class ResNet18(TwoStreamNetwork):
    """Two-stream ResNet-18: a stem, four stages of two basic blocks (widths ``w, 2w, 4w,
    8w``, strides 1/2/2/2), each block followed by the activation, then the head.

    * ``style="cifar"`` (the Counter-Hebb paper's CelebA net): stem ``conv3x3`` stride 1,
      no max-pool; **no average pooling**: the last stage is flattened into the head, so
      the input size fixes the head's width (``8w * H/8 * W/8``).
    * ``style="torchvision"``: torchvision's ResNet-18 (stem ``conv7x7`` stride 2, 3x3
      max-pool stride 2, global average pooling, head ``Linear(8w -> outputs)``).

    Convolutions have no bias (batch-norm follows). The head is ``Linear(F ->
    num_classes)`` (``decoder="single"``) or ``Linear(F -> num_tasks * num_classes)``
    (``"multi"``, one slot per task; see ``lit_bioplaus.GuidedCounterHebb``).

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: outputs per task (1 for a binary attribute with BCE).
        width: ``w``, the first stage's channels (64 in ResNet-18).
        style: ``"cifar"`` or ``"torchvision"``.
        decoder, num_tasks: the head's layout.
        weight_mode, feedback_init: as for ``MLP``.
        batch_norm: per-stream batch-norm (False: plain residual blocks with biases).
        activation: every activation.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 64, 64),
        num_classes: int = 10,
        width: int = 64,
        style: ResNetStyle = "cifar",
        decoder: Decoder = "single",
        num_tasks: int = 1,
        weight_mode: WeightMode = "shared",
        feedback_init: FeedbackInit = "forward",
        batch_norm: bool = True,
        activation: Activation = "relu",
    ) -> None:
        if style not in ("cifar", "torchvision"):
            raise ValueError(f"style must be 'cifar' or 'torchvision', got {style!r}")
        if decoder not in ("single", "multi"):
            raise ValueError(f"decoder must be 'single' or 'multi', got {decoder!r}")
        if len(input_shape) != 3 or width < 1:
            raise ValueError(f"ResNet18 needs input_shape (C, H, W) and a positive width, got {input_shape}, {width}")
        c, h, w = (int(s) for s in input_shape)
        bias = not batch_norm
        kernel, stride, padding = (3, 1, 1) if style == "cifar" else (7, 2, 3)
        stem = TwoStreamConv2d(c, width, kernel, stride, padding, bias=bias, weight_mode=weight_mode, input_size=(h, w))
        modules: list[TwoStreamLayer] = [stem, *_norm(width, "up", batch_norm), TwoStreamActivation(activation)]
        size = stem.output_size
        if style == "torchvision":
            pool = TwoStreamMaxPool2d(size, 3, 2, 1)
            modules.append(pool)
            size = pool.output_size
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                residual = TwoStreamResidualBlock(
                    channels, out_channels, stride, size, bias, weight_mode, batch_norm, activation
                )
                modules += [residual, TwoStreamActivation(activation)]
                channels, size = out_channels, residual.output_size
        if style == "torchvision":
            modules.append(TwoStreamGlobalAvgPool2d(size))
            features = channels
        else:
            modules.append(TwoStreamFlatten((channels, *size)))
            features = channels * size[0] * size[1]
        outputs = num_classes * (num_tasks if decoder == "multi" else 1)
        modules.append(TwoStreamLinear(features, outputs, weight_mode=weight_mode))
        super().__init__(modules)
        self.init_feedback(feedback_init)
