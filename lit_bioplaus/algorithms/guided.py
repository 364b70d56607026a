"""Instructed (guided) learning: a task given top-down selects a sub-network (Abel & Ullman,
NeurIPS 2024, Algorithm 2; ALGORITHMS.md section 4.1).

One training step, for ``T`` tasks and sample ``n`` with task ``t_n``:

1. **Pass 1, TD instruction** (no gradient, no bias, no lateral gating): the fixed
   instruction head maps the task one-hot ``e_t`` to the top of the core,
   ``hb_L = relu(relu(e_t W_task) W_hidden)``, and the network's ``down`` maps carry it to
   the bottom with the activation after each: ``hb_{l-1} = act(fb_l(hb_l))``. The gate of
   activation ``l`` is ``G_l(t) = [hb_l > 0]``. Gates depend on the task only, so pass 1
   runs once per step on ``eye(T)`` (``T`` rows, not ``N``) and the masks are indexed by
   ``t_n``. A TD batch-norm normalises the ``T`` rows with the statistics of the batch
   they stand for (each task weighted by its count; ALGORITHMS.md 4.1.1), so in training the
   gates also follow the batch's task counts; in evaluation it uses its running statistics.
2. **Pass 2, guided BU**: ``h_l = act(f_l(h_{l-1})) * G_l(t_n)`` at every activation; the
   head is not gated. Single decoder: ``y = P(h_L)`` (``C`` logits shared by the tasks);
   multi decoder: ``P`` has ``T * C`` outputs, slot ``t_n`` is the sample's.
3. **Error and pass 3** (Counter-Hebb): the error of the task's slot goes down with GaLU,
   bias-blocking and the same gates, so it stays inside the task's sub-network.
4. **Update**: the unguided Counter-Hebb energy of pass 2 and pass 3, i.e. with
   shared / symmetric weights exactly the autograd gradient of pass 2 with the gates
   held constant (what ``GuidedBackProp`` computes).

The instruction head is never trained: its two weights are buffers (saved, never in an
optimizer). Batches are ``(x, labels, task)`` with ``labels`` of shape ``(N, T)`` (one
label per task) and ``task`` ``(N,)`` (``lit_bioplaus.data.MultiMNIST`` draws it per
sample per epoch). Validation and test run every image under every task: ``{stage}/acc``
is the mean over tasks of the per-task accuracies ``{stage}/acc_task{t}``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_bioplaus.algorithms.backprop import BackProp
from lit_bioplaus.algorithms.base import BioplausModule, accuracy_metric, class_probabilities, classification_loss
from lit_bioplaus.algorithms.counter_hebb import CounterHebb, Gates, trace_up
from lit_bioplaus.nn import (
    TwoStreamActivation,
    TwoStreamBatchNorm,
    TwoStreamLinear,
    TwoStreamNetwork,
    TwoStreamResidual,
)


class TaskTarget(NamedTuple):
    """Training target of a guided batch."""

    label: Tensor
    """``(N,)`` int64: each sample's label under its task."""
    task: Tensor
    """``(N,)`` int64: each sample's task."""


class GuidedLearning(BioplausModule):
    """What every guided rule shares: the instruction head, pass 1, the gated BU pass, the
    decoders, the per-task metrics and prediction under an instruction. Combine it with a
    rule (``GuidedCounterHebb``, ``GuidedBackProp``); use those.

    Args:
        num_tasks: ``T`` (linked from the DataModule by the CLI).
        instruction_width: ``E``, the hidden width of the instruction head
            ``T -> E -> width of h_L`` (50 for Multi-MNIST, 200 for CelebA).
        train_all_tasks: train every image under every task (the loss is the mean over
            tasks; ``T`` times the work) instead of the batch's drawn task.
        predict_task: the instruction ``predict`` answers (None: every task).
        pretrained: zoo entry whose weights are loaded once the module is built.
        **kwargs: see the rule and ``BioplausModule``.
    """

    def __init__(
        self,
        num_tasks: int = 2,
        instruction_width: int = 50,
        train_all_tasks: bool = False,
        predict_task: int | None = None,
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_tasks=num_tasks, **kwargs)
        if predict_task is not None and not 0 <= predict_task < num_tasks:
            raise ValueError(f"predict_task must be in [0, {num_tasks}), got {predict_task}")
        self.predict_task = predict_task
        head = self.network.head
        if not isinstance(head, TwoStreamLinear):
            raise ValueError(f"guided learning needs a linear prediction head, got {head!r}")
        if head.out_features not in (self.num_classes, num_tasks * self.num_classes):
            raise ValueError(
                f"the head has {head.out_features} outputs: {self.num_classes} (single decoder) or "
                f"{num_tasks} x {self.num_classes} (multi decoder) expected"
            )
        self.decoder = "single" if head.out_features == self.num_classes else "multi"
        self.gate_points = [
            name for name, module in self.network.named_modules() if isinstance(module, TwoStreamActivation)
        ]
        """Names of the gated modules (every activation, inside residual blocks too), bottom to top."""
        if not self.gate_points:
            raise ValueError("guided learning needs activations to gate: the network has none below its head")
        self.has_td_norms = any(
            isinstance(module, TwoStreamBatchNorm) and module.stream == "down" for module in self.network.modules()
        )
        self.train_all_tasks = train_all_tasks
        self.register_buffer("instruction_task", _uniform((num_tasks, instruction_width), instruction_width))
        self.register_buffer("instruction_hidden", _uniform((instruction_width, head.in_features), head.in_features))
        task_metric = lambda: nn.ModuleList(  # noqa: E731
            accuracy_metric(self.num_classes, self.loss_name) for _ in range(num_tasks)
        )
        self.val_task_metrics, self.test_task_metrics = task_metric(), task_metric()
        if pretrained is not None:  # once the instruction head exists
            self.load_zoo_weights(pretrained)

    def check_num_tasks(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")

    # --- pass 1 and the gated BU pass ---------------------------------------------------------
    @torch.no_grad()
    def instruction_pass(self, instructions: Tensor, row_counts: Tensor | None = None) -> Gates:
        """Pass 1 of ``(R, T)`` instruction vectors: per gate point (module name of an
        activation), bottom to top, the ``(R, *shape)`` 0/1 masks ``[hb_l > 0]``. ReLU at
        every gate point (the paper's pass 1, whatever the BU activation), no bias, TD
        batch-norm by ``TwoStreamBatchNorm.instruct`` (``row_counts``: the batch's samples
        per row, for its batch statistics), in the weights' precision with autocast off, so
        the sub-networks do not depend on mixed precision."""
        weight = self.instruction_task
        with torch.autocast(weight.device.type, enabled=False):
            hb = F.relu(F.relu(instructions.to(weight.dtype) @ weight) @ self.instruction_hidden)
            gates: Gates = {}
            lowest = int(self.gate_points[0].split(".")[0])
            _instruct(self.network, range(lowest, len(self.network) - 1), hb, gates, "", row_counts)
        return dict(reversed(gates.items()))

    def task_gates(self, task_counts: Tensor | None = None) -> Gates:
        """Pass 1 on ``eye(T)``: ``(T, *shape)`` masks ``G_l(t)`` of every task (TD
        batch-norm with the statistics of a batch of ``task_counts`` samples per task, else
        its running statistics)."""
        weight = self.instruction_task
        return self.instruction_pass(torch.eye(self.num_tasks, device=weight.device, dtype=weight.dtype), task_counts)

    def sample_gates(self, task: Tensor) -> Gates:
        """Pass 1, then each sample's masks: ``(N, *shape)`` per gate point. In training, a
        TD batch-norm normalises with the batch's statistics, those of its tasks' counts."""
        counts = F.one_hot(task, self.num_tasks).sum(0) if self.training and self.has_td_norms else None
        return {name: mask[task] for name, mask in self.task_gates(counts).items()}

    def gated_outputs(self, x: Tensor, task: Tensor) -> Tensor:
        """Pass 2 (with autograd): ``(N, *input_shape) -> (N, outputs of the head)``, each
        activation's output multiplied by the sample's gate (constants: no gradient)."""
        return trace_up(self.network, x, self.sample_gates(task)).logits

    def task_logits(self, outputs: Tensor, task: Tensor) -> Tensor:
        """The ``(N, C)`` logits of each sample's task: all outputs for the single
        decoder, slot ``task[n]`` of the ``(N, T, C)`` view for the multi decoder."""
        if self.decoder == "single":
            return outputs
        slots = outputs.view(outputs.shape[0], self.num_tasks, self.num_classes)
        return slots[torch.arange(outputs.shape[0], device=outputs.device), task]

    def forward(self, x: Tensor, task: int | Tensor | None = None) -> Tensor:
        """Logits under an instruction: ``(N, C)`` for ``task`` (an int, or ``(N,)`` one per
        sample), or ``(N, T, C)`` for every task when ``task`` is None."""
        if task is None:
            logits = self(*self.every_task(x))
            return logits.view(self.num_tasks, x.shape[0], self.num_classes).transpose(0, 1)
        if isinstance(task, int):
            if not 0 <= task < self.num_tasks:
                raise ValueError(f"task must be in [0, {self.num_tasks}), got {task}")
            task = torch.full((x.shape[0],), task, device=x.device, dtype=torch.long)
        return self.task_logits(self.gated_outputs(x, task), task)

    @torch.no_grad()
    def predict(self, x: Tensor, task: int | Tensor | None = None) -> Tensor:
        """Class probabilities under an instruction (see ``forward``), in eval mode."""
        return class_probabilities(self(x, task), self.loss_name)

    # --- batches, loss, metrics ---------------------------------------------------------------
    def split_batch(self, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, TaskTarget]:
        """``(x, TaskTarget)`` of a training batch ``(x, labels (N, T), task (N,))``; with
        ``train_all_tasks`` every image under every task (``T * N`` rows, task-major)."""
        x, labels, task = batch
        if self.train_all_tasks:
            return self.all_tasks(x, labels)
        return x, TaskTarget(labels.gather(1, task[:, None]).squeeze(1), task)

    def every_task(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every image under every task: ``(T * N, ...)`` inputs, task-major, and their
        ``(T * N,)`` tasks."""
        task = torch.arange(self.num_tasks, device=x.device).repeat_interleave(x.shape[0])
        return x.repeat(self.num_tasks, *[1] * (x.dim() - 1)), task

    def all_tasks(self, x: Tensor, labels: Tensor) -> tuple[Tensor, TaskTarget]:
        """``every_task`` with each row's label under its task."""
        inputs, task = self.every_task(x)
        return inputs, TaskTarget(labels.T.reshape(-1), task)

    def loss(self, outputs: Tensor, target: TaskTarget) -> Tensor:  # type: ignore[override]
        """Batch-mean loss of each sample's task logits against its label."""
        return classification_loss(self.task_logits(outputs, target.task), target.label, self.loss_name)

    def log_train_metrics(self, loss: Tensor, logits: Tensor, target: TaskTarget, batch_idx: int) -> None:  # type: ignore[override]
        super().log_train_metrics(loss, logits, target.label, batch_idx)

    def _evaluate(self, batch: tuple[Tensor, Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        x, labels, _ = batch
        inputs, target = self.all_tasks(x, labels)
        logits = self(inputs, target.task)
        loss = classification_loss(logits, target.label, self.loss_name)
        metric = self.val_metric if stage == "val" else self.test_metric
        scores = self.scores(logits)
        metric(scores, target.label)  # all rows: the mean over tasks of the per-task accuracy
        task_metrics = self.val_task_metrics if stage == "val" else self.test_task_metrics
        for task, (task_metric, rows) in enumerate(zip(task_metrics, scores.split(x.shape[0]), strict=True)):
            task_metric(rows, labels[:, task])
            self.log(f"{stage}/acc_task{task}", task_metric)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=stage == "val")
        return loss, logits

    def compaction_report(self) -> Any:
        """The sub-networks' three numbers (``lit_bioplaus.subnetworks.CompactionReport``)."""
        from lit_bioplaus.subnetworks import compaction_report

        return compaction_report(self)

    def compact(self) -> GuidedLearning:
        """This module without the units no task uses (``lit_bioplaus.subnetworks.compact``)."""
        from lit_bioplaus.subnetworks import compact

        return compact(self)

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        """Class probabilities under ``predict_task`` ``(N, C)``, or every task ``(N, T, C)``."""
        return class_probabilities(self(batch[0], self.predict_task), self.loss_name)


def _instruct(
    network: TwoStreamNetwork, indices: range, hb: Tensor, gates: Gates, prefix: str, row_counts: Tensor | None
) -> Tensor:
    """Pass 1 down modules ``indices`` of one sequence (residual blocks: both sequences,
    summed), recording each activation's mask into ``gates``; the TD value at the bottom."""
    for index in reversed(indices):
        module, name = network[index], f"{prefix}{index}"
        if isinstance(module, TwoStreamActivation):
            hb = F.relu(hb)
            gates[name] = (hb > 0).to(hb.dtype)
        elif isinstance(module, TwoStreamResidual):
            hb = sum(
                _instruct(path, range(len(path)), hb, gates, f"{name}.{path_name}.", row_counts)
                for path_name, path in module.paths()
            )
        elif isinstance(module, TwoStreamBatchNorm):
            hb = module.instruct(hb, row_counts)
        else:
            hb = module.down(hb, use_bias=False)
    return hb


def _uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's linear-layer initialisation, of the
    bottom-up layers the instruction head's TD maps are the transposes of."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


class GuidedCounterHebb(GuidedLearning, CounterHebb):
    """Instructed Counter-Hebb learning (Algorithm 2): pass 1, the gated BU pass, the
    error of the task's decoder slot, the gated TD pass and the Counter-Hebb energy.

    Weight modes as ``CounterHebb`` (``shared`` / ``symmetric`` / ``asymmetric``, or
    ``fixed`` random TD weights for feedback alignment): passes 1 and 3 use the TD weights.
    """

    def training_objective(self, x: Tensor, target: TaskTarget) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        gates = self.sample_gates(target.task)
        trace = self.up_pass(x, gates)
        loss, delta = self.output_error(trace.logits, target)
        energy = self.lateral_energy(trace, self.down_pass(trace, delta, gates))
        return energy, loss, self.task_logits(trace.logits, target.task)


class GuidedBackProp(GuidedLearning, BackProp):
    """Backprop through the guided network: the gates of pass 1 are applied and carry no
    gradient; the BP twin of every guided Counter-Hebb result."""

    def training_objective(self, x: Tensor, target: TaskTarget) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        outputs = self.gated_outputs(x, target.task)
        loss = self.loss(outputs, target)
        return loss, loss.detach(), self.task_logits(outputs, target.task)
