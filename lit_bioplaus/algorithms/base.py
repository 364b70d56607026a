"""The LightningModule every learning rule builds on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_bioplaus.nn import MLP, TwoStreamNetwork

NetworkFactory = Callable[[Sequence[int], int], TwoStreamNetwork]
"""Builds a network from ``(input_shape, num_classes)``; in YAML a ``class_path`` of
``lit_bioplaus.nn`` (e.g. ``MLP``) whose other ``init_args`` come from the config."""

Loss = Literal["ce", "mse"]


def classification_loss(logits: Tensor, target: Tensor, loss: Loss) -> Tensor:
    """Batch-mean classification loss.

    Args:
        logits: ``(N, C)`` network outputs ``y``.
        target: ``(N,)`` integer class labels.
        loss: ``"ce"`` (softmax cross-entropy; ``dL/dy = (softmax(y) - onehot) / N``) or
            ``"mse"`` (mean over classes of ``(y - onehot)^2``; ``dL/dy = 2 (y - onehot) / (C N)``).
    """
    if loss == "ce":
        return F.cross_entropy(logits, target)
    if loss == "mse":
        return F.mse_loss(logits, F.one_hot(target, logits.shape[-1]).to(logits.dtype))
    raise ValueError(f"unknown loss {loss!r}; choose 'ce' or 'mse'")


class BioplausModule(L.LightningModule):
    """Shared parts of every algorithm: the network, the loss, accuracy metrics, the
    training step, validation / test / predict steps and the optimizer from the config.

    Subclasses implement ``training_objective`` (the learning rule): a scalar whose
    gradient is the rule's update. Every rule then trains the same way, with manual
    optimization: ``zero_grad``, one ``manual_backward(objective)``, ``step`` (so DDP
    all-reduces the update and mixed precision scales it), then the scheduler.

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.gradient_clip_val = gradient_clip_val
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.network = network(self.input_shape, num_classes)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_name: Loss = loss
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_loss = MeanMetric()
        if pretrained is not None:
            from lit_bioplaus.zoo import load_state_dict

            self.load_state_dict(load_state_dict(pretrained))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, *input_shape) -> (N, num_classes)`` logits of the bottom-up network."""
        return self.network(x)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return classification_loss(logits, target, self.loss_name)

    def training_objective(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The learning rule on one batch.

        Args:
            x: ``(N, *input_shape)`` inputs.
            target: ``(N,)`` class labels.

        Returns:
            ``(objective, loss, logits)``: the scalar whose gradient is the update, the
            detached batch loss (for logging) and the ``(N, num_classes)`` outputs.
        """
        raise NotImplementedError

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, target = batch
        objective, loss, logits = self.training_objective(x, target)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(objective)
        optimizer.step()
        self.step_scheduler("step")
        self.log_train_metrics(loss, logits, target, batch_idx)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def step_scheduler(self, interval: str) -> None:
        """Step the LR scheduler if ``interval`` is its ``scheduler_interval``
        (manual optimization: Lightning does not step it)."""
        scheduler = self.lr_schedulers()
        if scheduler is None or interval != self.scheduler_interval:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(self.trainer.callback_metrics["val/loss"])
        else:
            scheduler.step()

    def log_train_metrics(self, loss: Tensor, logits: Tensor, target: Tensor, batch_idx: int) -> None:
        """Accumulate the epoch's training loss and accuracy (logged by
        ``on_train_epoch_end``) and log ``train/loss_step`` every
        ``trainer.log_every_n_steps`` batches: a ``self.log`` call costs about a
        millisecond, as much as a whole small-batch step."""
        self.train_loss.update(loss, weight=target.shape[0])
        self.train_acc.update(logits.detach(), target)
        every = self.trainer.log_every_n_steps
        if every and batch_idx % every == 0:
            self.log("train/loss_step", loss, prog_bar=True)

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss.compute())
        self.log("train/acc", self.train_acc.compute())
        self.train_loss.reset()
        self.train_acc.reset()
        self.step_scheduler("epoch")

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, target = batch
        logits = self(x)
        loss = self.loss(logits, target)
        metric = self.val_acc if stage == "val" else self.test_acc
        metric(logits, target)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", metric, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Class probabilities ``(N, num_classes)``."""
        return self(batch[0]).softmax(dim=-1)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.trainable_parameters())
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
