"""Sub-networks of instructed learning (the Counter-Hebb paper's A.6; ALGORITHMS.md 4.4).

A unit (a neuron; for a convolution a channel at a position) is in task ``t``'s
sub-network iff pass 1 of ``t`` leaves it active (``G_l(t) = 1``). A gated-off unit outputs
exactly 0 under that task, so units that no task uses can be removed without changing any
output, and under one task the gated-off units need no computation.

* ``mask_statistics``: per gate layer, the active fraction per task and the cosine between
  the tasks' binary masks;
* ``SubnetworkMonitor``: a callback logging those every ``k`` epochs (scalars to any
  logger; the cosine matrices as a heat-map image to W&B, TensorBoard or the run folder);
* ``compaction_report``: (i) units no task uses, (ii) multiply-accumulates per task and for
  the union of tasks when gated-off units are skipped, (iii) parameters removable at
  channel / unit level;
* ``compact``: the smaller model, whose outputs equal the original's for every task.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import pairwise

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from lit_bioplaus.algorithms.base import log_image
from lit_bioplaus.algorithms.guided import GuidedLearning
from lit_bioplaus.nn import TwoStreamActivation, TwoStreamConv2d, TwoStreamFlatten, TwoStreamLinear


def task_masks(model: GuidedLearning) -> list[Tensor]:
    """Pass 1 on ``eye(T)``: per gate layer, bottom to top, the ``(T, *shape)`` bool masks."""
    gates = model.task_gates()
    return [gate > 0 for gate in gates.values()]


def mask_statistics(masks: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """``(active, cosine)`` per gate layer: the ``(T,)`` active fraction of each task and the
    ``(T, T)`` cosine similarity between the tasks' binary masks (1 on the diagonal; 0
    where a task has no active unit)."""
    active, cosine = [], []
    for mask in masks:
        flat = mask.flatten(1).double()
        active.append(flat.mean(dim=1))
        norms = flat.norm(dim=1).clamp_min(1e-12)
        cosine.append((flat @ flat.T) / (norms[:, None] * norms[None, :]))
    return active, cosine


def heat_map(matrices: list[Tensor], cell: int = 24) -> Tensor:
    """The ``(T, T)`` matrices (values in ``[0, 1]``) side by side as one ``(3, H, W)`` image:
    dark blue for 0 to yellow for 1, one ``cell``-pixel square per entry."""
    low, high = torch.tensor([0.1, 0.1, 0.5]), torch.tensor([1.0, 0.9, 0.1])
    tiles = []
    for matrix in matrices:
        value = matrix.float().clamp(0, 1).cpu()
        rgb = low[:, None, None] + (high - low)[:, None, None] * value[None]
        tiles.append(rgb.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2))
    return torchvision.utils.make_grid(tiles, nrow=len(tiles), padding=4, pad_value=1.0)


class SubnetworkMonitor(L.Callback):
    """Log the tasks' sub-networks every ``every_n_epochs`` training epochs:
    ``subnet/active_layer{k}_task{t}`` and ``subnet/cosine_layer{k}_tasks{s}{t}`` (``s < t``)
    for gate layer ``k`` (bottom to top), and the cosine matrices of all layers as the image
    ``subnet/mask_cosine`` (W&B, TensorBoard, or ``mask_cosine/epoch_N.png`` in the run
    folder of other loggers).

    Args:
        every_n_epochs: how often (the paper: every 3 epochs).
    """

    def __init__(self, every_n_epochs: int = 3) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, GuidedLearning):
            raise TypeError(f"SubnetworkMonitor needs a guided module, got {type(pl_module).__name__}")
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        active, cosine = mask_statistics(task_masks(pl_module))
        metrics = {}
        for layer, (fractions, matrix) in enumerate(zip(active, cosine, strict=True)):
            for task, fraction in enumerate(fractions):
                metrics[f"subnet/active_layer{layer}_task{task}"] = fraction.float()
            for s, t in zip(*torch.triu_indices(len(matrix), len(matrix), 1).tolist(), strict=True):
                metrics[f"subnet/cosine_layer{layer}_tasks{s}{t}"] = matrix[s, t].float()
        pl_module.log_dict(metrics)
        if trainer.is_global_zero:
            caption = f"epoch {trainer.current_epoch}: task-mask cosine per gate layer, bottom to top"
            self.publish(trainer, heat_map(cosine), caption)

    def publish(self, trainer: L.Trainer, image: Tensor, caption: str) -> None:
        """The ``(3, H, W)`` heat map to the run's loggers as ``subnet/mask_cosine`` (rank 0)."""
        log_image(trainer.loggers, "subnet/mask_cosine", image, trainer.current_epoch, caption)


@dataclass(frozen=True)
class CompactionReport:
    """The three measures of ALGORITHMS.md 4.4 (each says what it counts)."""

    units: list[int]
    """Units per gate layer (conv: channels x positions), bottom to top."""
    unused_units: list[int]
    """(i) Units of each gate layer that no task activates."""
    macs: int
    """Multiply-accumulates of one image through the ungated network (head included)."""
    macs_per_task: list[int]
    """(ii) MACs of one image under each task when gated-off units are skipped (a MAC
    counts when its input and its output unit are both active)."""
    macs_union: int
    """(ii) The same for the union of the tasks' sub-networks."""
    parameters: int
    """Trainable parameters of the network."""
    removable_parameters: int
    """(iii) Parameters ``compact`` removes: whole units (linear, and the flattened conv
    units a linear map reads) or channels (conv) that no task uses anywhere, with the
    weights that read them."""

    def __str__(self) -> str:
        kept = ", ".join(f"{1 - u / n:.1%}" for u, n in zip(self.unused_units, self.units, strict=True))
        per_task = ", ".join(f"{m / self.macs:.1%}" for m in self.macs_per_task)
        return (
            f"units kept per gate layer (union of tasks): {kept}\n"
            f"MACs per task: {per_task} (union {self.macs_union / self.macs:.1%}) of {self.macs:,}\n"
            f"parameters removable: {self.removable_parameters:,} of {self.parameters:,} "
            f"({self.removable_parameters / self.parameters:.1%})"
        )


def _weighted_and_gates(model: GuidedLearning) -> list[tuple[int, int | None]]:
    """``(map index, index of the activation right after it or None)`` per weighted map;
    refuses modules other than linear / conv maps, activations and flattens."""
    modules = list(model.network)
    pairs = []
    for index, module in enumerate(modules):
        if isinstance(module, (TwoStreamLinear, TwoStreamConv2d)):
            after = (
                index + 1 if index + 1 < len(modules) and isinstance(modules[index + 1], TwoStreamActivation) else None
            )
            pairs.append((index, after))
        elif not isinstance(module, (TwoStreamActivation, TwoStreamFlatten)):
            raise ValueError(f"compaction supports linear and conv maps, activations and flattens, not {module!r}")
    return pairs


def _connections(layer: TwoStreamLinear | TwoStreamConv2d, inputs: Tensor) -> Tensor:
    """Per output unit, how many of its weights read an active input (``inputs``: 0/1 masks,
    ``(R, *input shape)``)."""
    ones = torch.ones_like(layer.weight, dtype=inputs.dtype)
    if isinstance(layer, TwoStreamLinear):
        return inputs @ ones.T
    return F.conv2d(inputs, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _macs(model: GuidedLearning, gates: dict[str, Tensor] | None, rows: int) -> Tensor:
    """``(rows,)`` MACs of one image through the network when only the units active in
    ``gates`` (module name -> ``(rows, *shape)`` 0/1; None: every unit) are computed."""
    device = model.instruction_task.device
    active = torch.ones(rows, *model.input_shape, dtype=torch.float64, device=device)
    total = torch.zeros(rows, dtype=torch.float64, device=device)
    for index, module in enumerate(model.network):
        if isinstance(module, (TwoStreamLinear, TwoStreamConv2d)):
            reached = _connections(module, active)
            outputs = torch.ones_like(reached)
            if gates is not None and str(index + 1) in gates:
                outputs = gates[str(index + 1)].to(torch.float64).expand_as(reached)
            total += (reached * outputs).flatten(1).sum(dim=1)
            active = outputs
        elif isinstance(module, TwoStreamFlatten):
            active = module.up(active)
    return total.cpu()


@torch.no_grad()
def compaction_report(model: GuidedLearning) -> CompactionReport:
    """Measure the tasks' sub-networks (pass 1 on ``eye(T)``); see ``CompactionReport``."""
    _weighted_and_gates(model)  # refuses what cannot be compacted (batch-norm, residual blocks)
    masks = model.task_gates()
    union = {name: mask.amax(dim=0, keepdim=True) for name, mask in masks.items()}
    parameters = sum(p.numel() for p in model.network.up_parameters())
    return CompactionReport(
        units=[int(mask[0].numel()) for mask in masks.values()],
        unused_units=[int((mask == 0).sum()) for mask in union.values()],
        macs=int(_macs(model, None, 1)[0]),
        macs_per_task=[int(m) for m in _macs(model, masks, model.num_tasks)],
        macs_union=int(_macs(model, union, 1)[0]),
        parameters=parameters,
        removable_parameters=parameters - sum(p.numel() for p in compact(model).network.up_parameters()),
    )


def _kept_units(model: GuidedLearning, gates: dict[str, Tensor]) -> dict[int, Tensor]:
    """Per weighted map (not the head): the indices of its output units (linear) or
    channels (conv) that some task uses somewhere (``gates``: ``task_gates()``); a depthwise
    conv keeps the channels of the map below in step with its own."""
    pairs = _weighted_and_gates(model)
    kept = {}
    for index, gate in pairs[:-1]:
        if gate is None:
            raise ValueError(f"compaction needs an activation after every map but the head (module {index})")
        mask = gates[str(gate)]
        used = mask.flatten(2).amax(dim=(0, 2)) if mask.dim() > 2 else mask.amax(dim=0)
        kept[index] = torch.nonzero(used > 0).flatten()
    modules = list(model.network)
    for (below, _), (index, _) in reversed(list(pairwise(pairs[:-1]))):
        module = modules[index]
        if isinstance(module, TwoStreamConv2d) and module.groups > 1:
            if module.groups != module.in_channels or module.in_channels != module.out_channels:
                raise ValueError(f"compaction supports depthwise grouped convs only, got {module!r}")
            kept[below] = kept[index]
    return kept


@torch.no_grad()
def compact(model: GuidedLearning) -> GuidedLearning:
    """A copy of ``model`` without the units (linear), channels (conv) and flattened conv
    units that no task uses anywhere, nor the weights reading them; the instruction head
    shrinks with the top layer. Its outputs equal the original's under every task (the
    removed units output exactly 0 under every task, in pass 1 and pass 2). The copy's
    ``hparams`` still describe the original network: it is for inference and analysis."""
    gates = model.task_gates()
    kept = _kept_units(model, gates)
    smaller = copy.deepcopy(model)
    modules = list(smaller.network)
    inputs: Tensor | None = None  # kept input channels / units of the next map
    head_inputs: Tensor | None = None
    for index, module in enumerate(modules):
        if isinstance(module, TwoStreamFlatten):
            # the gate of the flatten's input: the module before is an activation (its gate) or a map or
            # nothing (no gate), as _weighted_and_gates admits nothing else
            inputs = _shrink_flatten(module, inputs, gates.get(str(index - 1)), smaller.instruction_task.device)
            continue
        if not isinstance(module, (TwoStreamLinear, TwoStreamConv2d)):
            continue
        outputs = kept.get(index)
        _shrink(module, outputs, inputs)
        head_inputs, inputs = inputs, outputs
    if head_inputs is not None:  # the units of h_L (flattened), where pass 1 starts
        smaller.instruction_hidden = smaller.instruction_hidden[:, head_inputs]
    return smaller


def _shrink_flatten(
    flatten: TwoStreamFlatten, channels: Tensor | None, gate: Tensor | None, device: torch.device
) -> Tensor:
    """Keep ``channels`` (None: all) of ``flatten``'s input and, of the flattened units it
    passes on (all, or its ``keep`` if compacted before), those in kept channels that some
    task uses (``gate``: the ``(T, *shape)`` masks of its input; None: all), in place;
    returns them as indices into the units it passed on before (the next map's inputs)."""
    count, *spatial = flatten.shape
    positions = math.prod(spatial)
    passed = torch.arange(count * positions, device=device) if flatten.keep is None else flatten.keep
    renumbered = torch.full((count,), -1, dtype=torch.long, device=device)  # old channel -> new, -1: removed
    kept_channels = torch.arange(count, device=device) if channels is None else channels
    renumbered[kept_channels] = torch.arange(len(kept_channels), device=device)
    channel = renumbered[passed // positions]
    used = channel >= 0
    if gate is not None:
        used &= gate.flatten(1).amax(dim=0)[passed] > 0
    columns = torch.nonzero(used).flatten()
    keep = channel[columns] * positions + passed[columns] % positions
    flatten.shape = (len(kept_channels), *spatial)
    flatten.keep = None if len(keep) == len(kept_channels) * positions else keep
    return columns


def _shrink(layer: TwoStreamLinear | TwoStreamConv2d, outputs: Tensor | None, inputs: Tensor | None) -> None:
    """Keep output units ``outputs`` and input units ``inputs`` (None: all) of ``layer``, in
    place: weights, biases, separate feedback weights and the layer's sizes."""
    depthwise = isinstance(layer, TwoStreamConv2d) and layer.groups > 1
    for name in ("weight", "_feedback_weight", "bias", "feedback_bias"):
        tensor = getattr(layer, name)
        if tensor is None:
            continue
        value = tensor.detach()
        if name in ("weight", "_feedback_weight"):
            value = value if outputs is None else value[outputs]
            value = value if inputs is None or depthwise else value[:, inputs]
        elif name == "bias":
            value = value if outputs is None else value[outputs]
        else:
            value = value if inputs is None else value[inputs]
        if isinstance(tensor, torch.nn.Parameter):
            setattr(layer, name, torch.nn.Parameter(value, requires_grad=tensor.requires_grad))
        else:
            setattr(layer, name, value)
    out_size = layer.weight.shape[0]
    in_size = out_size if depthwise else layer.weight.shape[1]
    if isinstance(layer, TwoStreamLinear):
        layer.out_features, layer.in_features = out_size, in_size
    else:
        layer.out_channels, layer.in_channels = out_size, in_size
        if depthwise:
            layer.groups = out_size
