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

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_bioplaus.nn.layers import TwoStreamLayer, _inner

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
ErrorNorm = Literal["vjp", "td_bn"]
"""How Counter-Hebb's error pass (pass 3) crosses batch-norm (ALGORITHMS.md 4.1.1):
``vjp``, through the VJP of the BU batch-norm with its batch statistics (exact: the
update is the gradient); ``td_bn``, renormalised by the TD batch-norm over the batch as
the official code does (not the gradient; for reproduction only)."""
ERROR_NORMS: tuple[str, ...] = get_args(ErrorNorm)


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dimension but the channels (``1``): batch and positions."""
    return [d for d in range(x.dim()) if d != 1]


def _channels(values: Tensor, like: Tensor) -> Tensor:
    """``(C,)`` per-channel values shaped to broadcast against ``like`` (``(N, C, ...)``)."""
    return values.view(1, -1, *[1] * (like.dim() - 2))


class TwoStreamBatchNorm(TwoStreamLayer):
    """Batch-norm of one stream at one point; the other stream passes unchanged.

    Per-stream batch-norm is a pair of these, one per stream, each with its own affine
    parameters and running statistics, placed where that stream normalises: a layer
    ``conv - BN(up) - act - BN(down)`` normalises the BU stream before its activation
    and the TD stream right after the map above, before the same activation (the
    feedback network's ``b = act(BN(V b'))``; the official Counter-Hebb code's TD
    batch-norm after each TD map).

    Counter-Hebb's error pass (``gated_down``) by ``error_norm``:

    * ``vjp`` (default): a BU norm passes the error through its VJP with the batch
      statistics of its input ``x`` (train mode; the running statistics in eval mode),
      ``dx = gamma / sigma * (delta - mean(delta) - xhat * mean(delta * xhat))`` (means
      over the batch and positions), and ``gamma``, ``beta`` learn
      ``sum(delta * xhat)``, ``sum(delta)``; a TD norm passes the error unchanged. So
      the update is the gradient.
    * ``td_bn``: as the official code, a TD norm renormalises the error with its own
      batch statistics (train mode, updating its running statistics), a BU norm passes it
      unchanged, and no norm parameter learns. Not the gradient.

    Pass 1 of guided learning runs a TD norm through ``instruct``.

    Args:
        num_features: channels (``(N, C, H, W)`` input) or features (``(N, C)``).
        stream: ``"up"`` or ``"down"``, the stream this module normalises.
        spatial: ``BatchNorm2d`` (True) or ``BatchNorm1d`` (False).
        error_norm: see above (rules with an error pass set it from their own option).
    """

    def __init__(self, num_features: int, stream: Stream, spatial: bool = True, error_norm: ErrorNorm = "vjp") -> None:
        super().__init__()
        if stream not in ("up", "down"):
            raise ValueError(f"stream must be 'up' or 'down', got {stream!r}")
        if error_norm not in ERROR_NORMS:
            raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {error_norm!r}")
        self.stream: Stream = stream
        self.error_norm: ErrorNorm = error_norm
        self.norm = nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)

    def up(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.stream == "up" else x

    def down(self, y: Tensor, use_bias: bool = True) -> Tensor:
        return self.norm(y) if self.stream == "down" else y

    def up_parameters(self) -> list[nn.Parameter]:
        return list(self.norm.parameters()) if self.stream == "up" else []

    def down_parameters(self) -> list[nn.Parameter]:
        return list(self.norm.parameters()) if self.stream == "down" else []

    def normalized(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(xhat, 1 / sigma)`` of input ``x`` as ``up`` normalised it: batch statistics in
        train mode (biased variance, as the forward pass), running ones in eval mode; in
        at least float32. Updates no statistics."""
        norm = self.norm
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        if norm.training or norm.running_mean is None:
            var, mean = torch.var_mean(x, dim=_reduce_dims(x), correction=0)
        else:
            mean, var = norm.running_mean.to(x.dtype), norm.running_var.to(x.dtype)
        inv_std = torch.rsqrt(var + norm.eps)
        return (x - _channels(mean, x)) * _channels(inv_std, x), inv_std

    def gated_down(self, x: Tensor, delta: Tensor) -> Tensor:
        if self.error_norm == "td_bn":
            return self.norm(delta) if self.stream == "down" else delta
        if self.stream == "down":
            return delta
        xhat, inv_std = self.normalized(x)
        error = delta.to(xhat.dtype)
        scale = inv_std if self.norm.weight is None else self.norm.weight.to(xhat.dtype) * inv_std
        if self.norm.training:
            dims = _reduce_dims(error)
            error = error - error.mean(dims, keepdim=True) - xhat * (error * xhat).mean(dims, keepdim=True)
        return (error * _channels(scale, error)).to(delta.dtype)

    def counter_hebb_energy(self, x: Tensor, delta: Tensor) -> Tensor:
        """``<gamma, sum(delta * xhat)> + <beta, sum(delta)>`` (``vjp``, BU norm with affine
        parameters), else zero: the gradients of ``sum <delta, up(x)>`` for fixed statistics."""
        if self.stream == "down" or self.error_norm == "td_bn" or self.norm.weight is None:
            return delta.new_zeros(())
        with torch.no_grad():
            xhat, _ = self.normalized(x)
            dims = _reduce_dims(xhat)
            gamma_update, beta_update = (delta * xhat).sum(dims), delta.sum(dims)
        return _inner(self.norm.weight, gamma_update) + _inner(self.norm.bias, beta_update)

    def instruct(self, y: Tensor, row_counts: Tensor | None = None) -> Tensor:
        """Pass 1 of guided learning through this point: a TD norm normalises ``(R, C, ...)``
        instruction rows; a BU norm passes them.

        Args:
            y: the TD values of ``R`` distinct instructions.
            row_counts: ``(R,)`` how many samples of the batch each row stands for (a
                task's count). Given in train mode, the statistics are the count-weighted
                ones, i.e. exactly those of the ``N = sum(row_counts)`` rows the official
                code normalises, and the running statistics are updated with them as
                ``BatchNorm`` would (unbiased variance over the ``N`` rows' values); else the
                running statistics are used and nothing is updated.
        """
        if self.stream == "up":
            return y
        norm = self.norm
        if row_counts is None or not norm.training:
            return F.batch_norm(y, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
        dims = _reduce_dims(y)
        weights = (row_counts / row_counts.sum()).to(y.dtype).view(-1, *[1] * (y.dim() - 1))
        positions = y[0, 0].numel()
        mean = (y * weights).sum(dims) / positions
        var = ((y - _channels(mean, y)).square() * weights).sum(dims) / positions
        if norm.track_running_stats and norm.running_mean is not None:
            self._update_running_statistics(mean, var, row_counts.sum() * positions)
        out = (y - _channels(mean, y)) * _channels(torch.rsqrt(var + norm.eps), y)
        if norm.weight is not None:
            out = out * _channels(norm.weight, y) + _channels(norm.bias, y)
        return out

    @torch.no_grad()
    def _update_running_statistics(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        """``BatchNorm``'s update from batch statistics of ``count`` values per channel
        (``var`` biased; the running variance gets the unbiased one)."""
        norm = self.norm
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
        unbiased = var * count / (count - 1).clamp_min(1)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)

    def extra_repr(self) -> str:
        return f"stream={self.stream}, error_norm={self.error_norm}"


__all__ = ["ERROR_NORMS", "Activation", "ErrorNorm", "TwoStreamActivation", "TwoStreamBatchNorm", "make_activation"]
