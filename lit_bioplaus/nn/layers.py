"""Two-stream layers: one module owns the upward (bottom-up / forward) map and
the downward (top-down / feedback) map of mirrored shape.

Every learning rule in the library runs on these layers. A rule only chooses
which stream to run, with which gates, and what each layer learns from.

Weight modes (constructor choice, see ``WeightMode``):

* ``shared``     -- the downward map uses the upward parameter itself
  (``W^T`` for a linear layer, the transposed convolution of ``W`` for a conv):
  exact symmetry, no extra parameters.
* ``symmetric``  -- a separate trainable feedback weight initialised as a copy of ``W``.
* ``asymmetric`` -- a separate trainable feedback weight initialised independently.
* ``fixed``      -- a separate random feedback weight that is never trained
  (a buffer, so it is saved with the model but optimizers never see it).

The feedback weight is stored *in the layout of the forward weight*
(``out x in`` for linear, ``out x in x kH x kW`` for conv), so that symmetry
means ``feedback_weight == weight`` and alignment metrics compare like with like.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WeightMode = Literal["shared", "symmetric", "asymmetric", "fixed"]
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)

FeedbackInit = Literal["forward", "official"]
"""Initialisation of independent feedback weights (``asymmetric``, ``fixed``):
``forward``, the forward weights' distribution (PyTorch's layer init); ``official``, the
Counter-Hebb code's ``kaiming_uniform_(a=0)`` on its TD weight layout, ``sqrt(6)`` to
~10x larger (see ``WeightedTwoStreamLayer.reset_feedback_official``)."""
FEEDBACK_INITS: tuple[str, ...] = get_args(FeedbackInit)


def _kaiming_uniform_(weight: Tensor) -> Tensor:
    """PyTorch's default ``nn.Linear`` / ``nn.Conv2d`` weight initialisation."""
    return nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def _uniform_bias_(bias: Tensor, fan_in: int) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.init.uniform_(bias, -bound, bound)


def _inner(param: Tensor, update: Tensor) -> Tensor:
    """``<param, update>`` as one dot product (no elementwise temporary); its gradient
    with respect to ``param`` is ``update`` (cast to ``param``'s dtype under autocast)."""
    return torch.dot(param.flatten(), update.flatten().to(param.dtype))


class TwoStreamLayer(nn.Module):
    """Base class of the two-stream layers.

    Subclasses implement ``up`` (bottom-up map) and ``down`` (top-down map, the
    mirror of ``up``: it takes a tensor shaped like ``up``'s output and returns
    one shaped like ``up``'s input). ``forward`` is ``up``, so a two-stream
    network is also an ordinary PyTorch network.
    """

    has_weights: bool = False
    """Whether the layer owns a forward weight (and so learns)."""

    supports_gated_down: bool = True
    """Whether ``gated_down`` is defined (Counter-Hebb's TD pass can run through it)."""

    def up(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.up(x)

    def up_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the upward map (the forward network's)."""
        return [p for child in self.children() if isinstance(child, TwoStreamLayer) for p in child.up_parameters()]

    def down_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the downward map only (the feedback network's)."""
        return [p for child in self.children() if isinstance(child, TwoStreamLayer) for p in child.down_parameters()]

    def gated_down(self, x: Tensor, delta: Tensor) -> Tensor:
        """Top-down map of an output-side error ``delta`` with bias-blocking, gated inside
        the layer by its bottom-up activity on input ``x`` (plain layers have no inside)."""
        return self.down(delta, use_bias=False)

    def counter_hebb_energy(self, x: Tensor, delta: Tensor) -> Tensor:
        """Batch-summed lateral energy whose gradient is this layer's Counter-Hebb update
        for bottom-up input ``x`` and output-side error ``delta`` (zero without weights)."""
        return delta.new_zeros(())


class WeightedTwoStreamLayer(TwoStreamLayer):
    """A two-stream layer with a forward weight, a feedback weight chosen by
    ``weight_mode`` and optional biases in both streams.

    Args:
        weight_shape: shape of the forward weight.
        fan_in: fan-in of the forward map (for bias initialisation).
        fan_out_down: fan-in of the downward map, i.e. the forward map's
            number of output units per input position (for the TD bias).
        bias: whether the forward map has a bias; a trainable separate
            feedback weight (``symmetric`` / ``asymmetric``) then also gets a
            top-down bias with one entry per input channel.
        weight_mode: see the module docstring.
        num_inputs: input channels, when not ``weight_shape[1]`` (grouped convolutions).
    """

    has_weights = True

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        fan_in: int,
        fan_out_down: int,
        bias: bool,
        weight_mode: WeightMode,
        num_inputs: int | None = None,
    ) -> None:
        super().__init__()
        if weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
        self.weight_mode: WeightMode = weight_mode
        self.weight = nn.Parameter(_kaiming_uniform_(torch.empty(weight_shape)))
        self.bias = nn.Parameter(_uniform_bias_(torch.empty(weight_shape[0]), fan_in)) if bias else None

        if weight_mode == "symmetric":
            self._feedback_weight = nn.Parameter(self.weight.detach().clone())
        elif weight_mode == "asymmetric":
            self._feedback_weight = nn.Parameter(_kaiming_uniform_(torch.empty(weight_shape)))
        elif weight_mode == "fixed":
            self.register_buffer("_feedback_weight", _kaiming_uniform_(torch.empty(weight_shape)))
        else:
            self._feedback_weight = None

        trainable_feedback = weight_mode in ("symmetric", "asymmetric")
        self.feedback_bias = (
            nn.Parameter(_uniform_bias_(torch.empty(num_inputs or weight_shape[1]), fan_out_down))
            if bias and trainable_feedback
            else None
        )

    def reset_feedback_parameters(self) -> None:
        """Re-initialise a separate feedback weight as PyTorch initialises a layer of its
        own: Kaiming-uniform on the *feedback* map's fan-in (the forward map's fan-out)."""
        if self._feedback_weight is not None:
            with torch.no_grad():
                nn.init.kaiming_uniform_(self._feedback_weight, a=math.sqrt(5), mode="fan_out")

    td_fan_mode: Literal["fan_in", "fan_out"] = "fan_in"
    """Which fan of the feedback weight (forward layout) is the fan-in of the official
    Counter-Hebb code's TD weight layout."""

    def reset_feedback_official(self) -> None:
        """Re-initialise the independent feedback weight as the official Counter-Hebb code
        does: ``U(-b, b)``, ``b = sqrt(6 / fan)``, ``fan`` the fan-in of its TD layout (the
        output width of a linear layer, ``C_in / groups * kH * kW`` of a conv).

        Raises:
            ValueError: the feedback weight is not independent (``shared`` / ``symmetric``).
        """
        if self.weight_mode not in ("asymmetric", "fixed"):
            raise ValueError(
                f"feedback_init='official' initialises independent feedback weights (weight_mode "
                f"'asymmetric' or 'fixed'), not weight_mode={self.weight_mode!r}"
            )
        with torch.no_grad():
            nn.init.kaiming_uniform_(self._feedback_weight, a=0.0, mode=self.td_fan_mode)

    def up_parameters(self) -> list[nn.Parameter]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def down_parameters(self) -> list[nn.Parameter]:
        if not self.has_trainable_feedback:
            return []
        return [p for p in (self._feedback_weight, self.feedback_bias) if p is not None]

    def fan_in_dims(self, param: Tensor) -> tuple[int, ...]:
        """Dimensions of ``param`` (the weight or the feedback weight, both stored in the
        forward layout) that index the inputs of the map it belongs to: the forward map
        reads dim 1 (and the kernel), the feedback map reads dim 0 (and the kernel)."""
        output_dim = 1 if param is self._feedback_weight else 0
        return tuple(d for d in range(param.dim()) if d != output_dim)

    @property
    def feedback_weight(self) -> Tensor:
        """Feedback weight in the forward weight's layout (``weight`` itself when shared)."""
        return self.weight if self._feedback_weight is None else self._feedback_weight

    def weight_update(self, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """Batch-summed outer products ``(sum_n delta_n (x) x_n, sum_n delta_n)``: the
        gradients of ``sum <delta, up(x)>`` with respect to ``weight`` and ``bias``.

        Args:
            x: ``up``'s input, shaped like it.
            delta: a tensor shaped like ``up(x)``.
        """
        raise NotImplementedError

    def counter_hebb_energy(self, x: Tensor, delta: Tensor) -> Tensor:
        """``<W, U> + <b, u>`` (plus ``<Wb, U> + <bb, ub>`` for trainable TD weights) with
        ``(U, u) = weight_update(x, delta)`` computed without autograd, so its gradient is
        the Counter-Hebb update: ``U`` for ``W`` and, transposed layout, for ``Wb``."""
        with torch.no_grad():
            weight_update, bias_update = self.weight_update(x, delta)
        energy = _inner(self.weight, weight_update)
        if self.bias is not None:
            energy = energy + _inner(self.bias, bias_update)
        if self.has_trainable_feedback:
            energy = energy + _inner(self.feedback_weight, weight_update)
            if self.feedback_bias is not None:
                energy = energy + _inner(self.feedback_bias, self.feedback_bias_update(x))
        return energy

    def feedback_bias_update(self, x: Tensor) -> Tensor:
        """``x`` summed over the batch (and positions): gradient of ``sum <x, b_bar>``."""
        return x.sum(dim=[d for d in range(x.dim()) if d != 1])

    @property
    def has_trainable_feedback(self) -> bool:
        """Whether the feedback weight is a separate trainable parameter."""
        return isinstance(self._feedback_weight, nn.Parameter)

    @torch.no_grad()
    def alignment(self) -> tuple[Tensor, Tensor]:
        """``(angle, norm_ratio)`` between forward and feedback weights: the angle in
        degrees between ``W`` and ``Wb`` (both in the forward layout, i.e. ``W`` against
        ``Wb^T`` in the paper's notation) and ``||Wb|| / ||W||``."""
        forward, feedback = self.weight.flatten().double(), self.feedback_weight.flatten().double()
        cosine = torch.dot(forward, feedback) / (forward.norm() * feedback.norm())
        angle = torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))
        return angle.to(self.weight.dtype), (feedback.norm() / forward.norm()).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"weight_mode={self.weight_mode}, bias={self.bias is not None}"


class TwoStreamLinear(WeightedTwoStreamLayer):
    """Linear layer with a mirrored top-down map.

    ``up``:   ``(N, in) -> (N, out)``,  ``y = x W^T + b``.
    ``down``: ``(N, out) -> (N, in)``,  ``x_bar = y_bar Wb + b_bar`` where ``Wb`` is
    the feedback weight in the forward layout, so ``Wb = W`` is exact symmetry.
    """

    td_fan_mode = "fan_out"  # the official TD layout is (in, out): its fan-in is ``out``

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_mode: WeightMode = "shared",
    ) -> None:
        super().__init__((out_features, in_features), in_features, out_features, bias, weight_mode)
        self.in_features = in_features
        self.out_features = out_features

    def up(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def weight_update(self, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        return delta.t() @ x, delta.sum(dim=0)

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        out = y @ self.feedback_weight
        if use_bias and self.feedback_bias is not None:
            out = out + self.feedback_bias
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


FeedbackMap = Literal["transpose", "upsample"]


class TwoStreamConv2d(WeightedTwoStreamLayer):
    """2-D convolution with a mirrored downward map.

    ``up``:   ``(N, C_in, H, W) -> (N, C_out, H', W')`` (any stride / padding / dilation).
    ``down``: ``(N, C_out, H', W') -> (N, C_in, H, W)``, by ``feedback``:

    * ``"transpose"`` -- ``conv_transpose2d`` with the feedback weight and the same
      geometry; ``output_padding`` is chosen from ``input_size`` so the output has
      exactly the bottom-up input's shape (with ``Wb = W`` this is the adjoint of ``up``:
      what Counter-Hebb learning needs).
    * ``"upsample"`` -- nearest-neighbour upsampling to ``(H, W)``, then a stride-1
      convolution ``C_out -> C_in`` with the feedback weight (the feedback map of
      Counter-Current learning); needs ``input_size`` and a size-preserving geometry
      (``2 * padding == dilation * (kernel - 1)``).

    Args:
        input_size: ``(H, W)`` of the bottom-up input. Needed whenever the
            stride does not divide the input evenly; networks pass it.
        groups: grouped convolution in both streams (``groups=C_in=C_out``: depthwise,
            e.g. the Counter-Hebb paper's pool-convolutions); weights ``(C_out, C_in / groups, kH, kW)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        weight_mode: WeightMode = "shared",
        input_size: tuple[int, int] | None = None,
        feedback: FeedbackMap = "transpose",
        groups: int = 1,
    ) -> None:
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        k, s, p, d = _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation)
        preserves_size = all(2 * p_ == d_ * (k_ - 1) for k_, p_, d_ in zip(k, p, d, strict=True))
        if feedback == "upsample" and (input_size is None or not preserves_size):
            raise ValueError("feedback='upsample' needs input_size and a size-preserving padding (2p == d (k - 1))")
        if feedback not in get_args(FeedbackMap):
            raise ValueError(f"feedback must be one of {get_args(FeedbackMap)}, got {feedback!r}")
        fan_in = in_channels // groups * k[0] * k[1]
        fan_out = out_channels // groups * k[0] * k[1]
        super().__init__((out_channels, in_channels // groups, *k), fan_in, fan_out, bias, weight_mode, in_channels)
        self.feedback: FeedbackMap = feedback
        self.groups = groups
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = k, s, p, d
        self.input_size = None if input_size is None else _pair(tuple(input_size))
        self.output_padding = (0, 0)
        if self.input_size is not None:
            self.output_padding = tuple(  # type: ignore[assignment]
                size - ((conv_output_size(size, k_, s_, p_, d_) - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + 1)
                for size, k_, s_, p_, d_ in zip(self.input_size, k, s, p, d, strict=True)
            )

    @property
    def output_size(self) -> tuple[int, int]:
        """``(H', W')`` of the bottom-up output (requires ``input_size``)."""
        if self.input_size is None:
            raise ValueError("output_size needs the layer's input_size")
        return tuple(  # type: ignore[return-value]
            conv_output_size(*args)
            for args in zip(self.input_size, self.kernel_size, self.stride, self.padding, self.dilation, strict=True)
        )

    def up(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def weight_update(self, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        # Under autocast the error can be bf16 / fp16 beside a float32 input (the image):
        # the convolution backward takes one dtype, so both run in the wider one.
        dtype = torch.promote_types(x.dtype, delta.dtype)
        weight = torch.nn.grad.conv2d_weight(
            x.to(dtype), self.weight.shape, delta.to(dtype), self.stride, self.padding, self.dilation, self.groups
        )
        return weight, delta.sum(dim=(0, 2, 3))

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        bias = self.feedback_bias if use_bias else None
        if self.feedback == "upsample":
            y = F.interpolate(y, size=self.input_size, mode="nearest")
            return F.conv_transpose2d(y, self.feedback_weight, bias, 1, self.padding, 0, self.groups, self.dilation)
        return F.conv_transpose2d(
            y, self.feedback_weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, feedback={self.feedback}, "
            + super().extra_repr()
        )


class TwoStreamFlatten(TwoStreamLayer):
    """``up``: ``(N, *shape) -> (N, prod(shape))``, then only the units ``keep`` (indices into
    the flattened units; None keeps all) as ``(N, len(keep))``; ``down`` restores
    ``(N, *shape)``, with zeros at the units not kept. ``compact`` sets ``keep`` to drop the
    flattened units no task uses."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.keep: Tensor | None
        self.register_buffer("keep", None)

    def up(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return x if self.keep is None else x.index_select(1, self.keep)

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        if self.keep is not None:
            y = y.new_zeros(len(y), math.prod(self.shape)).index_copy(1, self.keep, y)
        return y.unflatten(1, self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}" + ("" if self.keep is None else f", keep={len(self.keep)} units")


class TwoStreamMaxPool2d(TwoStreamLayer):
    """``up``: max-pooling, ``(N, C, H, W) -> (N, C, H', W')`` (default 2x2, stride 2);
    ``down``: nearest-neighbour upsampling back to ``input_size`` (the Counter-Current mirror).

    Args:
        input_size: ``(H, W)`` of the bottom-up input.
        kernel_size, stride, padding: as ``nn.MaxPool2d`` (stride defaults to the kernel;
            ``3, 2, 1`` is torchvision ResNet's stem pooling).
    """

    def __init__(
        self, input_size: tuple[int, int], kernel_size: int = 2, stride: int | None = None, padding: int = 0
    ) -> None:
        super().__init__()
        self.input_size = _pair(tuple(input_size))
        self.kernel_size, self.stride, self.padding = kernel_size, kernel_size if stride is None else stride, padding

    @property
    def output_size(self) -> tuple[int, int]:
        return tuple(conv_output_size(size, self.kernel_size, self.stride, self.padding, 1) for size in self.input_size)  # type: ignore[return-value]

    def up(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return F.interpolate(y, size=self.input_size, mode="nearest")

    def gated_down(self, x: Tensor, delta: Tensor) -> Tensor:
        """Each output's error goes back to the input that won its window on ``x`` (the
        lateral gating of max-pooling: exactly backprop through it, overlapping windows
        summed)."""
        _, indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, return_indices=True)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            delta, x, [self.kernel_size] * 2, [self.stride] * 2, [self.padding] * 2, [1, 1], False, indices
        )

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, kernel_size={self.kernel_size}, stride={self.stride}"


class TwoStreamGlobalAvgPool2d(TwoStreamLayer):
    """``up``: the mean over positions, ``(N, C, H, W) -> (N, C)``; ``down`` (and the
    Counter-Hebb error pass, exactly its backprop) is its adjoint: each value spread over
    the ``H x W`` positions divided by ``H W``.

    Args:
        input_size: ``(H, W)`` of the bottom-up input.
    """

    def __init__(self, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.input_size = _pair(tuple(input_size))

    def up(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return (y / math.prod(self.input_size))[:, :, None, None].expand(*y.shape, *self.input_size)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}"


class TwoStreamMirror(TwoStreamLayer):
    """A two-stream layer turned upside down: ``up`` is the wrapped layer's ``down`` and
    ``down`` its ``up`` -- e.g. a decoder layer whose forward map upsamples and whose
    feedback map is a strided convolution. The forward parameters are the wrapped
    layer's feedback parameters and vice versa.

    (Counter-Hebb learning needs ``up`` / ``down`` to be a weight and its transpose, so
    it does not run on mirrored layers.)
    """

    has_weights = True
    supports_gated_down = False

    def __init__(self, layer: WeightedTwoStreamLayer) -> None:
        super().__init__()
        if not layer.has_trainable_feedback:
            raise ValueError("a mirrored layer needs a separate trainable feedback weight (symmetric or asymmetric)")
        self.layer = layer

    def up(self, x: Tensor) -> Tensor:
        return self.layer.down(x)

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return self.layer.up(y)

    def up_parameters(self) -> list[nn.Parameter]:
        return self.layer.down_parameters()

    def down_parameters(self) -> list[nn.Parameter]:
        return self.layer.up_parameters()

    def counter_hebb_energy(self, x: Tensor, delta: Tensor) -> Tensor:
        raise NotImplementedError("Counter-Hebb learning does not run on mirrored layers")
