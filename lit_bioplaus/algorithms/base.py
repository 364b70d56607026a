"""The LightningModule every learning rule builds on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from torch import Tensor
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from lit_bioplaus import registry
from lit_bioplaus.algorithms.metrics import TrainingStatistics
from lit_bioplaus.fault_tolerance import DivergenceError
from lit_bioplaus.nn import MLP, TwoStreamNetwork

NetworkFactory = Callable[[Sequence[int], int], TwoStreamNetwork]
"""Builds a network from ``(input_shape, num_classes)``; in YAML a ``class_path`` of
``lit_bioplaus.nn`` (e.g. ``MLP``) whose other ``init_args`` come from the config."""

Loss = Literal["ce", "mse", "bce"]
Task = Literal["classification", "autoencoder"]


def classification_loss(logits: Tensor, target: Tensor, loss: Loss) -> Tensor:
    """Batch-mean classification loss.

    Args:
        logits: ``(N, C)`` network outputs ``y``.
        target: ``(N,)`` integer class labels (0 / 1 for ``bce``).
        loss: ``"ce"`` (softmax cross-entropy; ``dL/dy = (softmax(y) - onehot) / N``),
            ``"mse"`` (mean over classes of ``(y - onehot)^2``; ``dL/dy = 2 (y - onehot) / (C N)``)
            or ``"bce"`` (one logit, ``C = 1``: binary cross-entropy with logits;
            ``dL/dy = (sigmoid(y) - target) / N``).
    """
    if loss == "ce":
        return F.cross_entropy(logits, target)
    if loss == "mse":
        return F.mse_loss(logits, F.one_hot(target, logits.shape[-1]).to(logits.dtype))
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    raise ValueError(f"unknown loss {loss!r}; choose 'ce', 'mse' or 'bce'")


def class_scores(logits: Tensor, loss: Loss) -> Tensor:
    """``(N, C)`` scores whose argmax is the predicted class: the logits, or for ``bce``'s
    one logit ``y`` the pair ``(0, y)`` (class 1 iff ``y > 0``)."""
    return F.pad(logits, (1, 0)) if loss == "bce" else logits


def class_probabilities(logits: Tensor, loss: Loss) -> Tensor:
    """Softmax of the logits, or ``sigmoid(y)`` (the probability of class 1) for ``bce``."""
    return logits.sigmoid() if loss == "bce" else logits.softmax(dim=-1)


def accuracy_metric(num_classes: int, loss: Loss) -> MulticlassAccuracy:
    """Micro accuracy over ``class_scores``."""
    return MulticlassAccuracy(2 if loss == "bce" else num_classes, average="micro", validate_args=False)


def log_image(loggers: Sequence[Logger], key: str, image: Tensor, epoch: int, caption: str) -> None:
    """Log a ``(3, H, W)`` image in ``[0, 1]``: to W&B and TensorBoard under ``key``, and for
    other loggers as ``{key's last part}/epoch_{epoch}.png`` in the run directory."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, epoch)
        elif logger.log_dir is not None:
            folder = Path(logger.log_dir) / key.rsplit("/", 1)[-1]
            folder.mkdir(parents=True, exist_ok=True)
            torchvision.utils.save_image(image, folder / f"epoch_{epoch}.png")


def log_reconstructions(loggers: Sequence[Logger], inputs: Tensor, outputs: Tensor, epoch: int, count: int = 8) -> None:
    """Log a grid of the first ``count`` inputs (top row) above their reconstructions
    (bottom row), each image min-max scaled, as ``val/reconstructions`` (``log_image``).

    Args:
        inputs, outputs: ``(N, C, H, W)`` images and reconstructions.
    """
    count = min(count, inputs.shape[0])
    images = torch.cat([inputs[:count], outputs[:count]]).detach().float().cpu()
    grid = torchvision.utils.make_grid(images, nrow=count, normalize=True, scale_each=True)
    log_image(loggers, "val/reconstructions", grid, epoch, f"epoch {epoch}: inputs / outputs")


def check_range(
    name: str, value: float | None, low: float | None = None, high: float | None = None, open_low: bool = False
) -> None:
    """Refuse a numeric option outside ``[low, high]`` (``(low, high]`` with ``open_low``),
    or not a finite number; None (unset) passes."""
    if value is None:
        return
    below = low is not None and (value <= low if open_low else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        bounds = (
            f"{'(' if open_low else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        )
        raise ValueError(f"{name} must be in {bounds}, got {value}")


def _has_foreach(tensors: Sequence[Tensor]) -> bool:
    """Whether torch's multi-tensor (``foreach``) and fused optimizer kernels run on
    ``tensors``' device (CPU, CUDA)."""
    return bool(tensors) and tensors[0].device.type in ("cpu", "cuda")


def clip_gradient_sets_(sets: Sequence[tuple[Sequence[Tensor], float]]) -> None:
    """Clip the gradients of each ``(parameters, max norm)`` set to the set's own global
    2-norm, in place: ``torch.nn.utils.clip_grad_norm_`` per set, the same arithmetic
    (``g * min(1, max_norm / (norm + 1e-6))``, no host sync), but with one foreach norm
    kernel over the gradients of all the sets when they share a device and dtype."""
    grads = [[p.grad for p in params if p.grad is not None] for params, _ in sets]
    every = [g for group in grads for g in group]
    if not every:
        return
    if not _has_foreach(every) or any(g.device != every[0].device or g.dtype != every[0].dtype for g in every):
        for params, max_norm in sets:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    norms = iter(torch._foreach_norm(every, 2.0))
    for group, (_, max_norm) in zip(grads, sets, strict=True):
        if group:
            total = torch.linalg.vector_norm(torch.stack([next(norms) for _ in group]), 2.0)
            torch._foreach_mul_(group, torch.clamp(max_norm / (total + 1e-6), max=1.0))


PLAIN_PRECISIONS = (Precision, MixedPrecision, HalfPrecision, DoublePrecision)
"""Precision plugins whose gradient clipping is ``clip_grad_norm_`` on the unscaled updates."""

FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
"""Optimizers switched to their fused kernels: their state is created at the first step, so the
switch can come after construction."""


def use_fast_kernels(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Run ``optimizer``'s groups on torch's fused kernels for Adam, AdamW and SGD (the whole
    update of a tensor in one pass over its memory: Adam's step on the 784-500-10 MLP is 2.6x
    faster on one CPU thread), else on the multi-tensor ``foreach`` kernels, where the config
    left the choice to PyTorch (``fused`` and ``foreach`` unset) and the group is not
    ``differentiable``. PyTorch alone would use ``foreach`` on CUDA and the per-tensor loop on
    CPU. The same update, to float rounding. Setting ``foreach`` or ``fused`` in the
    optimizer's config keeps that setting.

    The groups' flags are read by every ``step``; the optimizer is not told ``fused`` at
    construction, so a ``GradScaler`` unscales its gradients before the step (and before the
    clipping in ``on_before_optimizer_step``) as for any other optimizer."""
    kernel = "fused" if type(optimizer) in FUSED_OPTIMIZERS else "foreach"
    for group in optimizer.param_groups:
        undecided = group.get("foreach", False) is None and group.get("fused", None) is None
        if undecided and not group.get("differentiable") and _has_foreach(group["params"]):
            group[kernel] = True
    return optimizer


class BioplausModule(L.LightningModule):
    """Shared parts of every algorithm: the network, the loss, metrics, the training
    step, validation / test / predict steps and the optimizer from the config.

    Subclasses implement ``training_objective`` (the learning rule): a scalar whose
    gradient is the rule's update. Every rule then trains the same way, with manual
    optimization: ``zero_grad``, one ``manual_backward(objective)``, ``step`` of every
    optimizer (so DDP all-reduces the update and mixed precision scales it), then the
    schedulers.

    Tasks: ``classification`` (targets are class labels; accuracy is logged) and
    ``autoencoder`` (the target is the input image itself; the loss is the MSE of the
    reconstruction, logged as ``{stage}/mse``, and validation logs an image grid of
    inputs above reconstructions).

    Args:
        network: builds the two-stream network from ``(input_shape, num_classes)``.
        num_classes: number of classes (linked from the DataModule by the CLI).
        input_shape: ``(C, H, W)`` of one sample (linked from the DataModule by the CLI).
        optimizer: optimizer factory taking the parameters, e.g. ``torch.optim.Adam``.
        lr_scheduler: optional scheduler factory taking the optimizer; stepped once
            per ``scheduler_interval`` (ReduceLROnPlateau monitors ``val/loss``).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        loss: classification loss, ``"ce"`` or ``"mse"``.
        gradient_clip_val: if set, clip the update's global 2-norm to this value before
            each optimizer step (after AMP unscaling; ``Trainer(gradient_clip_val=...)``
            is not available with manual optimization).
        pretrained: name of a model-zoo entry whose weights are loaded after
            construction (see ``lit_bioplaus.zoo``); verified by sha256.
        task: ``"classification"`` or ``"autoencoder"``.
        num_tasks: tasks of the data (linked from the DataModule by the CLI): 1 for
            plain data; more only for the guided rules (``lit_bioplaus.GuidedCounterHebb``,
            ``lit_bioplaus.GuidedBackProp``).
        compile: run the training objective through ``torch.compile`` (its forward and,
            by AOTAutograd, its backward; compiled on the first step, recompiled once for a
            batch of another size). The same update to float rounding; it pays where Python
            and kernel-launch overhead dominate (small networks, GPUs), at a one-off cost
            of about 20 s per rule on a CPU.
    """

    def __init__(
        self,
        network: NetworkFactory = MLP,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        loss: Loss = "ce",
        gradient_clip_val: float | None = None,
        pretrained: str | None = None,
        task: Task = "classification",
        num_tasks: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_range("gradient_clip_val", gradient_clip_val, low=0, open_low=True)
        self.save_hyperparameters()
        self.num_tasks = num_tasks
        self.check_num_tasks(num_tasks)
        self.automatic_optimization = False
        self.gradient_clip_val = gradient_clip_val
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.network = self.build_network(network)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_name: Loss = loss
        if task not in ("classification", "autoencoder"):
            raise ValueError(f"task must be 'classification' or 'autoencoder', got {task!r}")
        self.task: Task = task
        if (loss == "bce") != (num_classes == 1) and task == "classification":
            raise ValueError(
                f"loss 'bce' takes one logit (num_classes 1) and is the only loss that does, got loss "
                f"{loss!r} with num_classes {num_classes}"
            )
        metric = (lambda: accuracy_metric(num_classes, loss)) if task == "classification" else MeanSquaredError
        self.val_metric, self.test_metric = metric(), metric()
        self.metric_name = "acc" if task == "classification" else "mse"
        # The epoch's training loss and metric; NaN checks run on the logging interval, not
        # per step (a host-device sync each).
        self.train_statistics = TrainingStatistics(task)
        self.compile_objective = compile  # (not ``self.compile``: that is ``nn.Module.compile``)
        self._compiled_objective: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None
        if pretrained is not None:
            self.load_zoo_weights(pretrained)

    def load_zoo_weights(self, name: str) -> None:
        """Load the verified weights of zoo entry ``name`` into this module."""
        self.load_state_dict(registry.load_state_dict(name))

    def check_num_tasks(self, num_tasks: int) -> None:
        """Refuse multi-task data: an unguided rule has no instruction to pick the task."""
        if num_tasks != 1:
            raise ValueError(
                f"{type(self).__name__} learns one task, but the data has {num_tasks}: "
                "use lit_bioplaus.GuidedCounterHebb or lit_bioplaus.GuidedBackProp"
            )

    def build_network(self, network: NetworkFactory) -> TwoStreamNetwork:
        """The network from its factory (a hook for rules that initialise it their way)."""
        return network(self.input_shape, self.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, *input_shape) -> (N, num_classes)`` logits of the bottom-up network."""
        return self.network(x)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Batch loss of the outputs against the target (labels, or the input image)."""
        if self.task == "autoencoder":
            return F.mse_loss(logits, target)
        return classification_loss(logits, target, self.loss_name)

    def scores(self, logits: Tensor) -> Tensor:
        """What the accuracy metrics read: ``class_scores`` of the logits (the logits but for
        ``bce``); the MSE metric of an autoencoder reads the outputs themselves."""
        return class_scores(logits, self.loss_name) if self.task == "classification" else logits

    def split_batch(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``(input, target)``: the labels for classification, the image for an autoencoder."""
        x, labels = batch
        return (x, x) if self.task == "autoencoder" else (x, labels)

    def training_objective(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The learning rule on one batch.

        Args:
            x: ``(N, *input_shape)`` inputs.
            target: ``(N,)`` class labels, or for an autoencoder the images ``x``.

        Returns:
            ``(objective, loss, logits)``: the scalar whose gradient (times
            ``objective_scale()``, 1 but in a warm-up) is the update, the detached batch loss
            (for logging) and the ``(N, num_classes)`` outputs.
        """
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        """Pickles and deep copies leave the compiled objective behind (it is bound to this
        module; a copy compiles its own)."""
        return {**super().__getstate__(), "_compiled_objective": None}

    def objective_scale(self) -> float:
        """Factor of this step's objective (1; a rule's warm-up overrides it). Applied
        outside the (compiled) objective, so a changing factor does not recompile it."""
        return 1.0

    def objective(self) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
        """``training_objective``, through ``torch.compile`` if ``compile`` (built once)."""
        if not self.compile_objective:
            return self.training_objective
        if self._compiled_objective is None:
            self._compiled_objective = torch.compile(self.training_objective)
        return self._compiled_objective

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, target = self.split_batch(batch)
        objective, loss, logits = self.objective()(x, target)
        scale = self.objective_scale()
        if scale != 1.0:
            objective = objective * scale
        optimizers = self.optimizer_list()
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(objective)
        for optimizer in optimizers:
            optimizer.step()
        self.step_scheduler("step")
        self.log_train_metrics(loss, logits, target, batch_idx)
        return loss

    def optimizer_list(self) -> list[Any]:
        """The (Lightning-wrapped) optimizers, in ``configure_optimizers`` order."""
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def setup(self, stage: str) -> None:
        """``fit`` trains in train mode, also a module loaded for inference (e.g. by
        ``zoo.load_pretrained``, which returns it in eval mode): Lightning would keep it."""
        if stage == "fit":
            self.train()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip ``optimizer``'s update, each of its ``gradient_clip_sets`` to its own global
        2-norm, after AMP unscaling, with no host-device sync. Under the plain precision
        plugins (32 / 64 / half / mixed) that is ``clip_gradient_sets_``: one foreach norm
        pass over every set (Lightning's own path takes the per-tensor loop on CPU), with
        Lightning's refusal of an optimizer that unscales inside its step (its gradients are
        still scaled here); other plugins clip their own way, one set per optimizer."""
        sets = self.gradient_clip_sets(optimizer)
        if not sets:
            return
        if type(self.trainer.precision_plugin) not in PLAIN_PRECISIONS:
            if len(sets) > 1:
                raise RuntimeError(f"{type(self.trainer.precision_plugin).__name__} clips one set per optimizer")
            self.clip_gradients(optimizer, gradient_clip_val=sets[0][1], gradient_clip_algorithm="norm")
            return
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None and getattr(
            optimizer, "_step_supports_amp_scaling", False
        ):
            raise RuntimeError(
                f"{type(optimizer).__qualname__} unscales its gradients inside its step, so they cannot be clipped "
                "before it under 16-mixed: drop fused=True or gradient_clip_val"
            )
        clip_gradient_sets_(sets)

    def gradient_clip_sets(self, optimizer: torch.optim.Optimizer) -> list[tuple[list[Tensor], float]]:
        """``(parameters, max norm)`` per set of ``optimizer``'s parameters whose update is
        clipped to one global 2-norm: here all of them to ``gradient_clip_val`` (none when
        it is unset)."""
        if self.gradient_clip_val is None:
            return []
        return [([p for group in optimizer.param_groups for p in group["params"]], self.gradient_clip_val)]

    def step_scheduler(self, interval: str) -> None:
        """Step the LR schedulers if ``interval`` is their ``scheduler_interval``
        (manual optimization: Lightning does not step them)."""
        if interval != self.scheduler_interval:
            return
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(self.trainer.callback_metrics["val/loss"])
            else:
                scheduler.step()

    def log_train_metrics(self, loss: Tensor, logits: Tensor, target: Tensor, batch_idx: int) -> None:
        """Accumulate the epoch's training loss and accuracy (logged by
        ``on_train_epoch_end``) and log ``train/loss_step`` every
        ``trainer.log_every_n_steps`` batches: a ``self.log`` call costs about a
        millisecond, as much as a whole small-batch step."""
        self.train_statistics.update(loss, self.scores(logits.detach()), target)
        every = self.trainer.log_every_n_steps
        if every and batch_idx % every == 0:
            self.check_finite(loss, "the training loss")
            self.log("train/loss_step", loss, prog_bar=True)

    def check_finite(self, value: Tensor, what: str) -> None:
        """Stop training (``DivergenceError``) if ``value`` has a NaN or an infinity on any
        DDP process (every process stops, not only the one that diverged): one host-device
        sync, so called on the logging interval, at epoch end and before every checkpoint,
        not every step."""
        if not self._on_every_process(bool(torch.isfinite(value).all())):
            self._diverged(what)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of non-finite weights or buffers is never written (it could
        replace a good one): one check over the whole state, then the culprit is named."""
        state = {name: t for name, t in self.state_dict().items() if t.is_floating_point()}
        finite = not state or bool(torch.stack([t.isfinite().all() for t in state.values()]).all())
        if not self._on_every_process(finite):
            culprit = next((name for name, t in state.items() if not bool(t.isfinite().all())), None)
            self._diverged(f"parameter {culprit}" if culprit else "the state of another DDP process")

    def _on_every_process(self, flag: bool) -> bool:
        """``flag`` and-ed over the DDP processes (a collective: every process calls it)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        return trainer.strategy.reduce_boolean_decision(flag, all=True)

    def _diverged(self, what: str) -> None:
        raise DivergenceError(
            f"training diverged at step {self.global_step} (epoch {self.current_epoch}): {what} is not finite; "
            "nothing was saved from this point on (lower the learning rate, or clip with gradient_clip_val)"
        )

    def on_train_epoch_end(self) -> None:
        epoch_loss, epoch_metric = self.train_statistics.compute()
        self.check_finite(epoch_loss, "the epoch's training loss")
        self.log("train/loss_epoch", epoch_loss)
        self.log(f"train/{self.metric_name}", epoch_metric)
        self.train_statistics.reset()
        self.step_scheduler("epoch")

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        x, target = self.split_batch(batch)
        logits = self(x)
        loss = self.loss(logits, target)
        metric = self.val_metric if stage == "val" else self.test_metric
        metric(self.scores(logits), target)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/{self.metric_name}", metric, prog_bar=stage == "val")
        return loss, logits

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, outputs = self._evaluate(batch, "val")
        if self.task == "autoencoder" and batch_idx == 0 and self.trainer.is_global_zero:
            log_reconstructions(self.loggers, batch[0], outputs, self.current_epoch)
        return loss

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")[0]

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities ``(N, num_classes)``, or reconstructions for an autoencoder."""
        outputs = self(batch[0])
        return outputs if self.task == "autoencoder" else class_probabilities(outputs, self.loss_name)

    def configure_optimizers(self) -> Any:
        optimizer = use_fast_kernels(self.optimizer_factory(self.trainable_parameters()))
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "monitor": "val/loss",
            },
        }

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimizer updates (those with ``requires_grad``)."""
        return [p for p in self.parameters() if p.requires_grad]
