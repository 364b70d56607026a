"""Counter-Hebb learning (Abel & Ullman, NeurIPS 2024) and feedback-alignment baselines.

Unguided Counter-Hebb learning (Algorithm 1 of the paper):

1. bottom-up (BU) pass with ReLU, keeping every layer's input ``h_{l-1}`` and output ``h_l``;
2. error at the output ``e = dLoss/dy`` (per sample: ``delta_L = N e``);
3. top-down (TD) pass from ``delta_L`` through the layers' ``down`` maps with GaLU
   gating by the BU activity (``delta_l = [h_l > 0] * delta_l``) and bias-blocking;
4. Counter-Hebb update of every layer: ``dW_l = mean_n delta_l (x) h_{l-1}``,
   ``db_l = mean_n delta_l``; a separate TD weight gets the same update transposed and
   a TD bias ``mean_n h_{l-1}``.

The update is *carried by autograd*: it is exactly the gradient of the detached bilinear
lateral energy

    E = 1/N sum_n sum_l ( <delta_l, f_l(h_{l-1})> + <h_{l-1}, fb_l(delta_l)> )

(the second term only for trainable separate TD weights; ``lateral_energy`` evaluates it
from the batch-summed outer products, so it costs what backprop's weight gradients cost).
One ``manual_backward(E)`` puts the update into ``param.grad``, so DDP all-reduces it, AMP scales and unscales it, and
gradient clipping and weight decay see the true values. With ``shared`` or ``symmetric``
weights the TD pass computes exactly the backprop deltas, so the update *is* the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from lit_bioplaus.algorithms.base import BioplausModule, NetworkFactory
from lit_bioplaus.nn import (
    ERROR_NORMS,
    ErrorNorm,
    TwoStreamActivation,
    TwoStreamBatchNorm,
    TwoStreamLayer,
    TwoStreamNetwork,
    TwoStreamResidual,
)

Gates = dict[str, Tensor]
"""Guided learning's masks: module name -> 0/1 tensor shaped like its output. Names are
``nn.Module``'s: ``"k"`` for the network's ``k``-th module, ``"k.branch.j"`` for module
``j`` of the branch of the residual block ``k``."""


@dataclass
class UpTrace:
    """What the bottom-up pass keeps: per module of a sequence, its input and output, and
    for each residual block (by index) the traces of its two sequences."""

    inputs: list[Tensor]
    outputs: list[Tensor]
    blocks: dict[int, tuple[UpTrace, UpTrace]] = field(default_factory=dict)

    @property
    def logits(self) -> Tensor:
        return self.outputs[-1]

    def result(self, x: Tensor) -> Tensor:
        """The sequence's output (``x``, its input, for an empty sequence)."""
        return self.outputs[-1] if self.outputs else x


@dataclass
class DownTrace:
    """What the top-down error pass computes: per module of a sequence, the TD value on its
    output side (None where nothing learns), and the traces inside residual blocks."""

    deltas: list[Tensor | None]
    blocks: dict[int, tuple[DownTrace, DownTrace]] = field(default_factory=dict)


def trace_up(network: TwoStreamNetwork, x: Tensor, gates: Gates | None = None, prefix: str = "") -> UpTrace:
    """Bottom-up pass ``x -> y`` through ``network`` keeping each module's input and output
    (residual blocks traced inside); ``gates`` multiply the outputs of the modules they
    name. Runs with or without autograd (guided backprop differentiates through it)."""
    trace = UpTrace([], [])
    for index, module in enumerate(network):
        trace.inputs.append(x)
        if isinstance(module, TwoStreamResidual):
            paths = tuple(trace_up(path, x, gates, f"{prefix}{index}.{name}.") for name, path in module.paths())
            trace.blocks[index] = paths  # type: ignore[assignment]
            x = paths[0].result(x) + paths[1].result(x)
        else:
            x = module.up(x)
        if gates is not None and (gate := gates.get(f"{prefix}{index}")) is not None:
            x = x * gate
        trace.outputs.append(x)
    return trace


class CounterHebb(BioplausModule):
    """Counter-Hebb learning on a two-stream network (manual optimization).

    The network's weight mode selects the variant: ``shared`` (exact symmetry),
    ``symmetric`` (separate TD weights initialised as ``W``), ``asymmetric``
    (independent TD weights) or ``fixed`` (see ``FeedbackAlignment``).

    Args:
        weak_symmetry_sigma: if > 0, every update value is multiplied by independent
            noise ``~ N(1, sigma)``, drawn separately for the BU and TD weights (the
            same draw on every DDP rank, so ranks stay identical).
        error_norm: how the error pass crosses batch-norm (``TwoStreamBatchNorm``):
            ``vjp`` (exact: the update is the gradient, batch-norm's affine parameters
            learn) or ``td_bn`` (the official code's TD batch-norm over the error; not the
            gradient, for reproduction). Refused for a network without batch-norm.
        **kwargs: see ``BioplausModule``.
    """

    def __init__(self, weak_symmetry_sigma: float = 0.0, error_norm: ErrorNorm = "vjp", **kwargs: Any) -> None:
        if not 0 <= weak_symmetry_sigma < float("inf"):
            raise ValueError(f"weak_symmetry_sigma must be a non-negative number, got {weak_symmetry_sigma}")
        if error_norm not in ERROR_NORMS:
            raise ValueError(f"error_norm must be one of {ERROR_NORMS}, got {error_norm!r}")
        self.error_norm: ErrorNorm = error_norm
        super().__init__(**kwargs)
        self.weak_symmetry_sigma = weak_symmetry_sigma

    def build_network(self, network: NetworkFactory) -> TwoStreamNetwork:
        """The network; refused if a module has no Counter-Hebb TD pass (``gated_down``),
        or an activation is not ReLU: the paper's TD pass gates the error by ``[h > 0]``
        (GaLU), which is the activation's derivative for ReLU only (for tanh, ELU, ... the
        update would silently not be the gradient). Batch-norm parameters the rule never
        updates (a TD norm's; every norm's with ``td_bn``) are frozen."""
        built = super().build_network(network)
        unsupported = [repr(m) for m in built.modules() if isinstance(m, TwoStreamLayer) and not m.supports_gated_down]
        if unsupported:
            raise ValueError(f"{type(self).__name__} cannot run its top-down pass through: {', '.join(unsupported)}")
        norms = [m for m in built.modules() if isinstance(m, TwoStreamBatchNorm)]
        if self.error_norm != "vjp" and not norms:
            raise ValueError(f"error_norm={self.error_norm!r} applies to batch-norm, and the network has none")
        for norm in norms:
            norm.error_norm = self.error_norm
            if norm.stream == "down" or self.error_norm == "td_bn":
                # never updated by the rule (as BackProp's feedback-only parameters): frozen,
                # else DDP finds them unused and stops
                norm.norm.requires_grad_(False)
        others = sorted({m.name for m in built.modules() if isinstance(m, TwoStreamActivation) and m.name != "relu"})
        if others:
            raise ValueError(
                f"{type(self).__name__} gates its top-down pass with ReLU (GaLU), which is not the derivative of "
                f"{', '.join(others)}: use activation 'relu', or BackProp / CounterCurrent for {', '.join(others)}"
            )
        return built

    # --- the learning rule ---------------------------------------------------------------
    @torch.no_grad()
    def up_pass(self, x: Tensor, gates: Gates | None = None) -> UpTrace:
        """Bottom-up pass ``x -> y`` keeping each module's input and output (``trace_up``);
        ``gates`` multiply the outputs of the modules they name."""
        return trace_up(self.network, x, gates)

    def output_error(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, delta_L)`` with ``delta_L = N dLoss/dy``, the per-sample output error
        (``softmax(y) - onehot`` for CE, ``2/C (y - onehot)`` for MSE)."""
        logits = logits.detach().to(torch.promote_types(logits.dtype, torch.float32))
        logits.requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss(logits, target)
            (error,) = torch.autograd.grad(loss, logits)
        return loss.detach(), error * logits.shape[0]

    @torch.no_grad()
    def down_pass(self, trace: UpTrace, delta: Tensor, gates: Gates | None = None) -> DownTrace:
        """Top-down pass of the output error through every module's ``gated_down``:
        GaLU at the activations (``delta * [h > 0]``, times the module's gate when
        ``gates`` names it, so the error stays inside the task's sub-network),
        bias-blocking in the maps, max-pooling's error routed to each window's winner,
        batch-norm by ``error_norm``; a residual block's error goes down both of its
        sequences and the two arrivals are summed.

        Returns per module the TD value on its output side, shaped like its output; None
        below the lowest module that learns (so, as in backprop, the input's delta is never
        computed).
        """
        lowest = next(index for index, module in enumerate(self.network) if module.has_weights)
        down, _ = _trace_down(self.network, trace, delta.to(trace.logits.dtype), gates, "", lowest)
        return down

    def lateral_energy(self, trace: UpTrace, down: DownTrace) -> Tensor:
        """The detached bilinear energy ``E`` whose gradient is the Counter-Hebb update:
        ``E = 1/N sum_l E_l(h_{l-1}, delta_l)`` over the modules that learn (inside residual
        blocks too), each module's ``counter_hebb_energy`` computed from batch-summed outer
        products (the cost of backprop's weight gradients)."""
        return _energy(self.network, trace, down, trace.logits.new_zeros((), dtype=torch.float32)) / len(trace.logits)

    def training_objective(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1: BU pass, output error, gated TD pass; the objective is ``E``."""
        trace = self.up_pass(x)
        loss, delta = self.output_error(trace.logits, target)
        return self.lateral_energy(trace, self.down_pass(trace, delta)), loss, trace.logits

    # --- Lightning hooks -----------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Refuse ``Trainer(sync_batchnorm=True)``: the error pass normalises with each
        process's own batch statistics (``TwoStreamBatchNorm.normalized``), so synchronised
        forward statistics would make the update silently not the gradient."""
        synced = [name for name, module in self.named_modules() if isinstance(module, torch.nn.SyncBatchNorm)]
        if synced:
            raise ValueError(
                f"{type(self).__name__} normalises with each process's batch statistics: "
                f"sync_batchnorm is not supported (found SyncBatchNorm at {synced[0]})"
            )
        super().on_fit_start()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.weak_symmetry_sigma > 0:
            self._apply_weak_symmetry_noise()
        super().on_before_optimizer_step(optimizer)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log_dict(self.alignment_metrics())

    def alignment_metrics(self) -> dict[str, Tensor]:
        """Per weighted layer ``i`` with separate TD weights: ``align/angle_{i}`` (degrees
        between ``W`` and ``Wb^T``) and ``align/norm_ratio_{i}`` (``||Wb|| / ||W||``)."""
        metrics = {}
        for index, layer in enumerate(self.network.weighted_layers()):
            if layer.weight_mode != "shared":
                metrics[f"align/angle_{index}"], metrics[f"align/norm_ratio_{index}"] = layer.alignment()
        return metrics

    @torch.no_grad()
    def _apply_weak_symmetry_noise(self) -> None:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.global_step)
        for param in self.trainable_parameters():
            if param.grad is not None and param.dim() > 1:
                noise = torch.randn(param.shape, generator=generator, device=param.device)
                param.grad.mul_(noise.mul_(self.weak_symmetry_sigma).add_(1.0))


def _trace_down(
    network: TwoStreamNetwork, trace: UpTrace, delta: Tensor, gates: Gates | None, prefix: str, lowest: int = 0
) -> tuple[DownTrace, Tensor]:
    """``CounterHebb.down_pass`` through one sequence, from the error at its output down to
    module ``lowest``: the TD values and the error at the input (``delta`` itself when
    ``lowest`` is above the input, i.e. not computed)."""
    modules = list(network)
    down = DownTrace([None] * len(modules))
    for index in reversed(range(lowest, len(modules))):
        if gates is not None and (gate := gates.get(f"{prefix}{index}")) is not None:
            delta = delta * gate
        down.deltas[index] = delta
        if index == lowest and prefix == "":
            break
        module = modules[index]
        if isinstance(module, TwoStreamResidual):
            arrivals = []
            for (name, path), path_trace in zip(module.paths(), trace.blocks[index], strict=True):
                path_down, arrival = _trace_down(path, path_trace, delta, gates, f"{prefix}{index}.{name}.")
                arrivals.append((path_down, arrival))
            down.blocks[index] = (arrivals[0][0], arrivals[1][0])
            delta = arrivals[0][1] + arrivals[1][1]
        else:
            delta = module.gated_down(trace.inputs[index], delta)
    return down, delta


def _energy(network: TwoStreamNetwork, trace: UpTrace, down: DownTrace, energy: Tensor) -> Tensor:
    """``energy`` plus the lateral energy of every module of one sequence that learns."""
    for index, module in enumerate(network):
        delta = down.deltas[index]
        if delta is None or not (module.has_weights or isinstance(module, TwoStreamBatchNorm)):
            continue
        if isinstance(module, TwoStreamResidual):
            for (_, path), path_trace, path_down in zip(
                module.paths(), trace.blocks[index], down.blocks[index], strict=True
            ):
                energy = _energy(path, path_trace, path_down, energy)
        else:
            energy = energy + module.counter_hebb_energy(trace.inputs[index], delta)
    return energy


class FeedbackAlignment(CounterHebb):
    """Feedback alignment: the Counter-Hebb machinery with fixed random TD weights.

    The network must be built with ``weight_mode: fixed``: its TD weights are buffers,
    never updated; only the BU weights learn from the randomly projected error.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        modes = {layer.weight_mode for layer in self.network.weighted_layers()}
        if modes != {"fixed"}:
            raise ValueError(f"FeedbackAlignment needs a network with weight_mode 'fixed', got {sorted(modes)}")


class DirectFeedbackAlignment(CounterHebb):
    """Direct feedback alignment: the output error reaches every hidden layer through
    its own fixed random matrix, ``delta_l = [h_l > 0] * (delta_L B_l)``, with
    ``B_l`` of shape ``(num_classes, prod(shape of h_l))`` (a buffer, never trained;
    ``direct_feedback_{i}`` for the weighted module ``network[i]``).

    The layers' own top-down maps are not used, so the network must have
    ``weight_mode: shared`` (no separate TD parameters).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        modes = {layer.weight_mode for layer in self.network.weighted_layers()}
        if modes != {"shared"}:
            raise ValueError(f"DirectFeedbackAlignment needs weight_mode 'shared', got {sorted(modes)}")
        if any(isinstance(module, (TwoStreamResidual, TwoStreamBatchNorm)) for module in self.network):
            raise ValueError(
                "DirectFeedbackAlignment projects the error onto a chain of layers without batch-norm: "
                "residual blocks and batch-norm are not supported"
            )
        with torch.no_grad():
            trace = self.up_pass(torch.zeros(1, *self.input_shape))
        bound = self.num_classes**-0.5
        for layer_index, hidden_index in self._hidden_points():
            width = trace.outputs[hidden_index][0].numel()
            matrix = torch.empty(self.num_classes, width).uniform_(-bound, bound)
            self.register_buffer(f"direct_feedback_{layer_index}", matrix)
        self._register_load_state_dict_pre_hook(self._rename_legacy_buffers)

    def _rename_legacy_buffers(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        """Checkpoints of the layout before activations were modules name the buffers by
        the index among the maps (``layers.{i}``): rename them to the module index."""
        if not any(key.startswith(f"{prefix}network.layers.") for key in state_dict):
            return
        renames = self.network.legacy_key_map()
        buffers = {key: state_dict.pop(key) for key in list(state_dict) if key.startswith(f"{prefix}direct_feedback_")}
        for key, value in buffers.items():
            old_index = key.removeprefix(f"{prefix}direct_feedback_")
            state_dict[f"{prefix}direct_feedback_{renames[f'layers.{old_index}.'].rstrip('.')}"] = value

    def _hidden_points(self) -> list[tuple[int, int]]:
        """Per hidden weighted module ``i`` (all but the head): ``(i, j)`` with ``j`` the
        last module before the next weighted one, whose output is the hidden layer ``h_l``
        (after the activation and any pooling) that receives the projected error."""
        modules = list(self.network)
        weighted = [index for index, module in enumerate(modules) if module.has_weights]
        return [(i, next_i - 1) for i, next_i in pairwise(weighted)]

    @torch.no_grad()
    def down_pass(self, trace: UpTrace, delta: Tensor) -> DownTrace:  # type: ignore[override]
        """``delta`` per module: the output error projected to every hidden layer ``h_l``
        (``B_l e``), then through the modules down to its weighted module's output with
        their ``gated_down`` (GaLU, pooling); None where nothing learns."""
        modules = list(self.network)
        delta = delta.to(trace.logits.dtype)
        deltas: list[Tensor | None] = [None] * len(modules)
        deltas[-1] = delta
        for layer_index, hidden_index in self._hidden_points():
            projected = (delta @ getattr(self, f"direct_feedback_{layer_index}")).view_as(trace.outputs[hidden_index])
            for index in range(hidden_index, layer_index, -1):
                projected = modules[index].gated_down(trace.inputs[index], projected)
            deltas[layer_index] = projected
        return DownTrace(deltas)
