"""Architectures built once from two-stream layers and shared by every algorithm."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_bioplaus.nn.layers import (
    FEEDBACK_INITS,
    FeedbackInit,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLayer,
    TwoStreamLinear,
    TwoStreamMaxPool2d,
    TwoStreamMirror,
    WeightedTwoStreamLayer,
    WeightMode,
)
from lit_bioplaus.nn.pointwise import Activation, TwoStreamActivation, TwoStreamBatchNorm


class TwoStreamNetwork(TwoStreamLayer):
    """One sequence of two-stream modules, bottom to top, like ``nn.Sequential``: maps
    (linear, conv, pooling, flatten, residual blocks), activations and per-stream norms
    in the order they run. The order of operations *is* the data: no flags beside it.

    * ``up`` (``forward``): the modules' ``up`` maps bottom to top, ``(N, *input_shape)
      -> (N, num_outputs)``; the last module is the prediction head.
    * ``down``: the modules' ``down`` maps top to bottom: the ungated top-down (feedback)
      network, with the activation after every map but the lowest and each stream's norms
      where they stand (see ``TwoStreamBatchNorm``).
    * ``network[k]`` is the ``k``-th module; ``network[:k]`` a ``TwoStreamNetwork`` of the
      first ``k`` (e.g. the features after an activation); ``len``, iteration, printing
      work as for ``nn.Sequential``.

    Learning rules walk the same sequence: Counter-Hebb runs ``gated_down`` of every
    module top to bottom, Counter-Current pairs the two streams at every activation.

    Args:
        modules: the two-stream modules, bottom to top.
    """

    def __init__(self, modules: Sequence[TwoStreamLayer]) -> None:
        super().__init__()
        for index, module in enumerate(modules):
            if not isinstance(module, TwoStreamLayer) or isinstance(module, TwoStreamNetwork):
                raise TypeError(f"module {index} is a {type(module).__name__}, not a two-stream module (nor a network)")
            self.add_module(str(index), module)
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[TwoStreamLayer]:
        return iter(self._modules.values())  # type: ignore[arg-type]

    def __getitem__(self, index: int | slice) -> Any:
        modules = list(self)
        return TwoStreamNetwork(modules[index]) if isinstance(index, slice) else modules[index]

    def up(self, x: Tensor) -> Tensor:
        for module in self:
            x = module.up(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """The BU features the head reads: every module but the last, activations
        included (``network[:-1]``): ``(N, *input_shape) -> (N, *features)``."""
        for module in list(self)[:-1]:
            x = module.up(x)
        return x

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        """Ungated top-down pass: ``(N, num_outputs) -> (N, *input_shape)``."""
        for module in reversed(list(self)):
            y = module.down(y, use_bias=use_bias)
        return y

    def up_parameters(self) -> list[nn.Parameter]:
        """Parameters of the upward (forward) stream, norms included."""
        return [p for module in self for p in module.up_parameters()]

    def down_parameters(self) -> list[nn.Parameter]:
        """Parameters used only by the downward (feedback) stream, norms included."""
        return [p for module in self for p in module.down_parameters()]

    @property
    def head(self) -> TwoStreamLayer:
        """The prediction head ``H_pred`` (last module)."""
        return self[-1]

    def weighted_layers(self) -> list[WeightedTwoStreamLayer]:
        """The linear and conv layers, bottom to top (inside blocks too)."""
        return [module for module in self.modules() if isinstance(module, WeightedTwoStreamLayer)]

    def activations(self) -> list[TwoStreamActivation]:
        """The activation modules, bottom to top."""
        return [module for module in self if isinstance(module, TwoStreamActivation)]

    def reset_feedback_parameters(self) -> None:
        """Re-initialise every separate feedback map as a layer of its own (see
        ``WeightedTwoStreamLayer.reset_feedback_parameters``); rules with a trained
        feedback network call this once the network is built."""
        for layer in self.weighted_layers():
            layer.reset_feedback_parameters()

    def init_feedback(self, scheme: FeedbackInit) -> None:
        """Initialise the independent feedback weights by ``scheme`` (see ``FeedbackInit``):
        ``forward`` keeps the layers' own initialisation, ``official`` applies
        ``reset_feedback_official`` to every weighted layer (raising unless all are
        ``asymmetric`` or ``fixed``)."""
        if scheme not in FEEDBACK_INITS:
            raise ValueError(f"feedback_init must be one of {FEEDBACK_INITS}, got {scheme!r}")
        if scheme == "official":
            for layer in self.weighted_layers():
                layer.reset_feedback_official()

    def legacy_key_map(self) -> dict[str, str]:
        """Prefix renames from the layout before activations and norms were modules of
        the sequence (``layers.{i}``, ``up_norms.{i}``, ``down_norms.{i}``, indexed by the
        maps alone) to this one (``{k}``, ``{k}.norm``)."""
        renames, maps = {}, -1
        for index, module in enumerate(self):
            if isinstance(module, TwoStreamBatchNorm):
                renames[f"{module.stream}_norms.{maps}."] = f"{index}.norm."
            elif not isinstance(module, TwoStreamActivation):
                maps += 1
                renames[f"layers.{maps}."] = f"{index}."
        return renames

    def _rename_legacy_keys(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        """Load-state-dict pre-hook: checkpoints and zoo files of the old layout load."""
        old_prefixes = tuple(prefix + name for name in ("layers.", "up_norms.", "down_norms."))
        legacy = [key for key in state_dict if key.startswith(old_prefixes)]
        if not legacy:
            return
        renames = self.legacy_key_map()
        for key in legacy:
            rest = key[len(prefix) :]
            old = next((old for old in renames if rest.startswith(old)), None)
            if old is not None:
                state_dict[prefix + renames[old] + rest[len(old) :]] = state_dict.pop(key)


class TwoStreamResidual(TwoStreamLayer):
    """A residual block: two two-stream sequences from one input, summed.

    ``up(x) = branch.up(x) + shortcut.up(x)``; ``down(y) = branch.down(y) +
    shortcut.down(y)``; an empty ``shortcut`` is the identity. The sequences hold their
    activations, norms and gate points like the network does, so a learning rule walks
    into them: Counter-Hebb's error pass sends the output's error down both sequences and
    sums what arrives at the input (with symmetric weights: backprop through the block).
    Inside the network, module ``j`` of the branch of block ``k`` is named
    ``"k.branch.j"`` (``nn.Module`` naming), as guided learning's gates are.

    Args:
        branch: the residual branch, bottom to top.
        shortcut: the shortcut (e.g. a strided 1x1 convolution and its norm); empty: identity.
    """

    def __init__(self, branch: Sequence[TwoStreamLayer], shortcut: Sequence[TwoStreamLayer] = ()) -> None:
        super().__init__()
        if not branch:
            raise ValueError("a residual block needs a non-empty branch")
        self.branch = TwoStreamNetwork(branch)
        self.shortcut = TwoStreamNetwork(shortcut)

    @property
    def has_weights(self) -> bool:  # type: ignore[override]
        return any(module.has_weights for module in (*self.branch, *self.shortcut))

    def paths(self) -> tuple[tuple[str, TwoStreamNetwork], tuple[str, TwoStreamNetwork]]:
        """``(("branch", branch), ("shortcut", shortcut))``: the two sequences by name."""
        return ("branch", self.branch), ("shortcut", self.shortcut)

    def up(self, x: Tensor) -> Tensor:
        return self.branch.up(x) + self.shortcut.up(x)

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return self.branch.down(y, use_bias) + self.shortcut.down(y, use_bias)

    def gated_down(self, x: Tensor, delta: Tensor) -> Tensor:
        raise TypeError("a residual block's error pass needs its inner activity: learning rules walk into it")


def stage(
    layer: TwoStreamLayer, activation: Activation, norm: int | None = None, spatial: bool = True
) -> list[TwoStreamLayer]:
    """``layer``, then (with ``norm`` features) its BU batch-norm, the activation, and
    the TD batch-norm of the stream coming down into this point (``BatchNorm2d``, or
    ``BatchNorm1d`` when not ``spatial``)."""
    if norm is None:
        return [layer, TwoStreamActivation(activation)]
    return [
        layer,
        TwoStreamBatchNorm(norm, "up", spatial),
        TwoStreamActivation(activation),
        TwoStreamBatchNorm(norm, "down", spatial),
    ]


class MLP(TwoStreamNetwork):
    """Multi-layer perceptron ``prod(input_shape) - hidden[0] - ... - num_classes``.

    Args:
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)``; flattened first.
        num_classes: number of outputs.
        hidden: widths of the hidden layers, e.g. ``[500]`` or ``[256] * 5``.
        activation: hidden activation.
        bias: whether layers have biases.
        weight_mode: feedback weight mode of every layer (see ``lit_bioplaus.nn.layers``).
        feedback_init: initialisation of independent feedback weights (``FeedbackInit``;
            ``official`` needs ``asymmetric`` or ``fixed``).
        batch_norm: per-stream batch-norm at every hidden layer (``stage``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (500,),
        activation: Activation = "relu",
        bias: bool = True,
        weight_mode: WeightMode = "shared",
        feedback_init: FeedbackInit = "forward",
        batch_norm: bool = False,
    ) -> None:
        widths = [math.prod(input_shape), *hidden]
        modules: list[TwoStreamLayer] = [TwoStreamFlatten(tuple(input_shape))]
        for w_in, w_out in pairwise(widths):
            linear = TwoStreamLinear(w_in, w_out, bias=bias, weight_mode=weight_mode)
            modules += stage(linear, activation, norm=w_out if batch_norm else None, spatial=False)
        modules.append(TwoStreamLinear(widths[-1], num_classes, bias=bias, weight_mode=weight_mode))
        super().__init__(modules)
        self.init_feedback(feedback_init)


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
        activation, bias, weight_mode, feedback_init, batch_norm: as for ``MLP``.
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
        feedback_init: FeedbackInit = "forward",
        batch_norm: bool = False,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ConvNet needs input_shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        modules: list[TwoStreamLayer] = []
        for out_channels in channels:
            conv = TwoStreamConv2d(
                c, out_channels, kernel_size, stride, padding, bias=bias, weight_mode=weight_mode, input_size=(h, w)
            )
            modules += stage(conv, activation, norm=out_channels if batch_norm else None)
            c, (h, w) = out_channels, conv.output_size
        modules.append(TwoStreamFlatten((c, h, w)))
        widths = [c * h * w, *hidden]
        for w_in, w_out in pairwise(widths):
            linear = TwoStreamLinear(w_in, w_out, bias=bias, weight_mode=weight_mode)
            modules += stage(linear, activation, norm=w_out if batch_norm else None, spatial=False)
        modules.append(TwoStreamLinear(widths[-1], num_classes, bias=bias, weight_mode=weight_mode))
        super().__init__(modules)
        self.init_feedback(feedback_init)


class PooledConvNet(TwoStreamNetwork):
    """The Counter-Current paper's CIFAR CNN: 3x3 stride-1 convolutions, each followed by
    2x2 max-pooling and the activation, then a linear classifier.

    ``conv(channels[0]) - pool - act - ... - conv(channels[-1]) - pool - act - flatten - linear``.
    Downward: the linear map's feedback and the activation, then per stage nearest x2
    upsampling and a 3x3 convolution (``TwoStreamConv2d(feedback="upsample")`` after
    ``TwoStreamMaxPool2d``), and the activation again but after the lowest convolution.
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
        modules: list[TwoStreamLayer] = []
        for out_channels in channels:
            if min(h, w) < 2:
                raise ValueError(f"input {tuple(input_shape)} is too small for {len(channels)} 2x2 poolings")
            modules.append(
                TwoStreamConv2d(
                    c, out_channels, 3, 1, 1, bias=bias, weight_mode=weight_mode, input_size=(h, w), feedback="upsample"
                )
            )
            pool = TwoStreamMaxPool2d((h, w))
            modules += stage(pool, activation)
            c, (h, w) = out_channels, pool.output_size
        head = TwoStreamLinear(c * h * w, num_classes, bias=bias, weight_mode=weight_mode)
        super().__init__([*modules, TwoStreamFlatten((c, h, w)), head])


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
        maps: list[TwoStreamLayer] = [*encoder, *mirrored]
        modules: list[TwoStreamLayer] = []
        for layer in maps[:-1]:
            width = layer.layer.in_channels if isinstance(layer, TwoStreamMirror) else layer.out_channels
            modules += stage(layer, activation, norm=width if batch_norm else None)
        super().__init__([*modules, maps[-1]])
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


Decoder = Literal["single", "multi"]


class MultiMNISTNet(TwoStreamNetwork):
    """The Counter-Hebb paper's Multi-MNIST network (official code's layout, ALGORITHMS.md 4.2),
    all biases on, no padding, ``C = channels``:

    ``conv 5x5 1->C - ReLU - depthwise conv 2x2 stride 2 - ReLU - conv 5x5 C->C - ReLU -
    depthwise conv 3x3 stride 2 - ReLU - flatten - Linear(9C -> 50) - ReLU - head``

    (28x28 -> 24 -> 12 -> 8 -> 3). Every activation is a gate point of guided
    Counter-Hebb learning. The head is ``Linear(50 -> num_classes)`` (``decoder="single"``,
    shared by the tasks) or ``Linear(50 -> num_tasks * num_classes)`` (``"multi"``: one
    slot of ``num_classes`` outputs per task). At ``C = 100``: 299,760 parameters (single
    decoder, shared weights). The paper's text says 2x2 kernels for both pool-convs; the
    code, followed here, has a 3x3 second one.

    Args:
        input_shape: ``(1, 28, 28)`` (other sizes work if the geometry stays positive).
        num_classes: classes per task.
        channels: ``C``.
        hidden: width of the fully connected layer (50).
        decoder: ``"single"`` or ``"multi"``.
        num_tasks: tasks (the multi decoder's slots).
        activation, weight_mode, feedback_init: as for ``MLP`` (``feedback_init="official"``
            with ``asymmetric`` reproduces the paper's CH asym runs).
        batch_norm: per-stream batch-norm at every gated layer (not in the paper's net).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        channels: int = 100,
        hidden: int = 50,
        decoder: Decoder = "single",
        num_tasks: int = 2,
        activation: Activation = "relu",
        weight_mode: WeightMode = "shared",
        feedback_init: FeedbackInit = "forward",
        batch_norm: bool = False,
    ) -> None:
        if decoder not in ("single", "multi"):
            raise ValueError(f"decoder must be 'single' or 'multi', got {decoder!r}")
        if len(input_shape) != 3:
            raise ValueError(f"MultiMNISTNet needs input_shape (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        geometry = [(channels, 5, 1, 1), (channels, 2, 2, channels), (channels, 5, 1, 1), (channels, 3, 2, channels)]
        modules: list[TwoStreamLayer] = []
        for out_channels, kernel, stride, groups in geometry:
            conv = TwoStreamConv2d(
                c, out_channels, kernel, stride, 0, weight_mode=weight_mode, input_size=(h, w), groups=groups
            )
            modules += stage(conv, activation, norm=out_channels if batch_norm else None)
            c, (h, w) = out_channels, conv.output_size
        modules.append(TwoStreamFlatten((c, h, w)))
        linear = TwoStreamLinear(c * h * w, hidden, weight_mode=weight_mode)
        modules += stage(linear, activation, norm=hidden if batch_norm else None, spatial=False)
        outputs = num_classes * (num_tasks if decoder == "multi" else 1)
        modules.append(TwoStreamLinear(hidden, outputs, weight_mode=weight_mode))
        super().__init__(modules)
        self.init_feedback(feedback_init)
