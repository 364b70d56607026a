"""Counter-Current learning (Kao & Hariharan, NeurIPS 2024).

A forward network maps the input up, a feedback network of mirrored architecture maps
the target down; layer ``l`` owns a forward map ``U_l`` and a feedback map ``V_l``
(separate parameters, the two streams of a two-stream layer):

    a_l = act(U_l sg(a_{l-1})),  a_0 = x        b_{l-1} = act(V_l sg(b_l)),  b_L = target

with ``sg`` = stop-gradient (detach) on every layer input, so each local loss below only
trains the maps that produced its two arguments. Local losses pair ``a_l`` with ``b_l``
at every learning point: the input, the output of every activation (i.e. the input of
every weighted layer above the lowest), and the output:

* classification (``b_L`` = all ``C`` class one-hots, so ``B_l`` has ``C`` rows):
  ``similarity="dot"``: ``s * mse(A B^T, Y) / d`` with ``Y`` the ``N x C`` label
  indicator, ``d`` the width (the official MLP recipe: ``s = 0.5 * 256``);
  ``similarity="cosine"``: rows L2-normalised, ``s * mse(A B^T, Y)`` plus the
  anti-collapse terms ``c * (mse(A A^T, I) + mse(B B^T, I))`` (the CNN recipe);
  the top forward layer learns from the cross-entropy of the logits;
* autoencoder (``b_L`` = the image): ``mse(a_l, b_l)`` at every point, output included.

All local losses are summed into one objective and one ``manual_backward``: the
detaches keep every gradient local, and DDP / AMP / clipping see ordinary gradients.
The forward and the feedback network have their own optimizer settings, schedules and
clips: one optimizer with a parameter group per network where the two can share one, else
two optimizers (``merge_optimizers``).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_bioplaus.algorithms.base import (
    PLAIN_PRECISIONS,
    BioplausModule,
    NetworkFactory,
    check_range,
    use_fast_kernels,
)
from lit_bioplaus.nn import TwoStreamActivation, TwoStreamMirror, TwoStreamNetwork, WeightedTwoStreamLayer

Similarity = Literal["dot", "cosine"]


class CounterCurrent(BioplausModule):
    """Counter-Current learning on a two-stream network with separate feedback weights
    (manual optimization).

    Both networks step once per batch: by one optimizer whose parameter groups are the
    forward network (first) and the feedback network, each with its own factory's settings
    (learning rate, momentum, ...) and its own clip, when ``merge_optimizers`` allows it;
    else by two optimizers, forward first. ``trainer.global_step`` counts optimizer steps:
    one per batch with one optimizer, two with two (``max_steps`` counts them alike).

    Args:
        optimizer: the forward network's optimizer factory.
        lr_scheduler: the forward network's scheduler factory.
        gradient_clip_val: global-norm clip of the forward network's update.
        feedback_optimizer: the feedback network's optimizer factory.
        feedback_lr_scheduler: the feedback network's scheduler factory (stepped on
            ``scheduler_interval`` like the forward one).
        feedback_gradient_clip_val: global-norm clip of the feedback network's update.
        similarity: ``"dot"`` (un-normalised, MLP recipe) or ``"cosine"`` (CNN recipe).
        similarity_scale: ``s`` above.
        anti_collapse_scale: ``c`` above (``cosine`` only).
        warmup_steps: the objective is scaled by ``min(1, (batch + 1) / warmup_steps)``
            over the first batches (0: no warm-up).
        gradient_centralization: subtract from every weight's update its mean over the
            map's inputs (per output unit / output channel), before clipping.
        target_filter: drop from the local losses the samples whose predicted
            probability of the true class is within this distance of 1 (None: keep all).
        merge_optimizers: step both networks with one optimizer (a parameter group per
            network: the same update, one Lightning optimizer step and one clipping pass
            per batch instead of two). ``None``: whenever they can share one, i.e. both
            factories make the same ``torch.optim`` class (not LBFGS), both schedules have
            the same settings (or are both unset: ``schedule_mismatch``) and the precision
            plugin clips per parameter set (or nothing is clipped); ``True``: required (an
            error says why not); ``False``: two optimizers (the checkpoint format of earlier
            versions: resume those with it). One optimizer is required under 16-mixed,
            where Lightning updates the loss scale after every optimizer's step.
        **kwargs: see ``BioplausModule`` (``task``: classification or autoencoder).
    """

    def __init__(
        self,
        network: NetworkFactory,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_clip_val: float | None = None,
        feedback_optimizer: OptimizerCallable = torch.optim.SGD,
        feedback_lr_scheduler: LRSchedulerCallable | None = None,
        feedback_gradient_clip_val: float | None = None,
        similarity: Similarity = "dot",
        similarity_scale: float = 128.0,
        anti_collapse_scale: float = 0.0,
        warmup_steps: int = 0,
        gradient_centralization: bool = False,
        target_filter: float | None = None,
        merge_optimizers: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network=network,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            gradient_clip_val=gradient_clip_val,
            **kwargs,
        )
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        check_range("warmup_steps", warmup_steps, low=0)
        check_range("similarity_scale", similarity_scale, low=0, open_low=True)
        check_range("anti_collapse_scale", anti_collapse_scale, low=0)
        check_range("feedback_gradient_clip_val", feedback_gradient_clip_val, low=0, open_low=True)
        check_range("target_filter", target_filter, low=0, high=1)
        self.feedback_optimizer_factory = feedback_optimizer
        self.feedback_lr_scheduler_factory = feedback_lr_scheduler
        self.feedback_gradient_clip_val = feedback_gradient_clip_val
        self.similarity: Similarity = similarity
        self.similarity_scale = similarity_scale
        self.anti_collapse_scale = anti_collapse_scale
        self.warmup_steps = warmup_steps
        self.gradient_centralization = gradient_centralization
        self.target_filter = target_filter
        self.merge_optimizers = merge_optimizers

    def build_network(self, network: NetworkFactory) -> TwoStreamNetwork:
        """The network, with every feedback map initialised as a layer of its own
        (Kaiming-uniform on the feedback map's fan-in, as in the official code, then
        the network's own adjustments: ``TwoStreamNetwork.reset_feedback_parameters``).

        Refused unless every weighted module is one map per stream with separate
        trainable feedback weights, and exactly one activation separates consecutive
        weighted modules (each activation is a learning point between two of them)."""
        built = super().build_network(network)
        if not all(layer.has_trainable_feedback for layer in built.weighted_layers()):
            raise ValueError("CounterCurrent needs separate trainable feedback weights: use weight_mode 'asymmetric'")
        kinds = []
        for module in built:
            if isinstance(module, TwoStreamActivation):
                kinds.append("activation")
            elif isinstance(module, (WeightedTwoStreamLayer, TwoStreamMirror)):
                kinds.append("map")
            elif module.has_weights:
                raise ValueError(f"CounterCurrent needs one map per stream in each weighted module, got {module!r}")
        if kinds != ["map"] + ["activation", "map"] * (len(kinds) // 2):
            raise ValueError(
                "CounterCurrent needs exactly one activation between consecutive weighted modules "
                f"and none below the lowest or above the highest; the network has {kinds}"
            )
        built.reset_feedback_parameters()
        return built

    # --- the two streams ------------------------------------------------------------------
    def forward_activities(self, x: Tensor) -> list[Tensor]:
        """``a_l`` at every learning point, bottom to top: the input ``x``, the output of
        every activation, then the network output. Every weighted module's input is
        detached, so ``a_l`` depends only on the parameters of the weighted module below
        it (and of the modules in between, e.g. norms)."""
        activities = [x]
        for module in self.network:
            x = module.up(x.detach() if module.has_weights else x)
            if isinstance(module, TwoStreamActivation):
                activities.append(x)
        return [*activities, x]

    def feedback_activities(self, top: Tensor) -> list[Tensor]:
        """``b_l`` at the same points as ``forward_activities``, bottom to top: the
        feedback network run down from ``top`` (every weighted module's input detached),
        read after each activation's ``down``, i.e. ``b_{l-1} = act(V_l sg(b_l))`` with
        the modules between (norms, upsampling, reshapes) in the order they stand."""
        signals, y = [top], top
        for module in reversed(list(self.network)):
            y = module.down(y.detach() if module.has_weights else y)
            if isinstance(module, TwoStreamActivation):
                signals.append(y)
        return [y, *reversed(signals)]

    # --- the local losses -----------------------------------------------------------------
    def similarity_loss(self, activity: Tensor, signal: Tensor, labels: Tensor, keep: Tensor | None) -> Tensor:
        """Classification pair loss at one point.

        Args:
            activity: ``(N, ...)`` forward activity ``a_l``.
            signal: ``(C, ...)`` feedback activity ``b_l`` of the ``C`` class one-hots.
            labels: ``(N, C)`` label indicator ``Y`` (one-hot rows, ``a_l``'s dtype).
            keep: ``(N,)`` 0/1 weights of the samples that take part (None: all).
        """
        a, b = activity.flatten(1), signal.flatten(1)
        if keep is not None:
            a = a * keep[:, None]
        if self.similarity == "dot":
            return F.mse_loss(a @ b.T, labels) * (self.similarity_scale / a.shape[1])
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        loss = self.similarity_scale * F.mse_loss(a @ b.T, labels)
        if self.anti_collapse_scale:
            eye_a = torch.eye(a.shape[0], device=a.device, dtype=a.dtype)
            eye_b = torch.eye(b.shape[0], device=b.device, dtype=b.dtype)
            loss = loss + self.anti_collapse_scale * (F.mse_loss(a @ a.T, eye_a) + F.mse_loss(b @ b.T, eye_b))
        return loss

    def filter_mask(self, logits: Tensor, target: Tensor) -> Tensor | None:
        """``(N,)`` 1 for samples whose true-class probability is not yet within
        ``target_filter`` of 1, else 0 (None when filtering is off)."""
        if self.target_filter is None:
            return None
        with torch.no_grad():
            confidence = logits.float().softmax(dim=-1).gather(1, target[:, None]).squeeze(1)
            return (confidence <= 1.0 - self.target_filter).to(logits.dtype)

    def local_losses(self, x: Tensor, target: Tensor) -> tuple[list[Tensor], Tensor]:
        """``(losses, outputs)``: one loss per learning point, bottom to top (for
        classification the last is the cross-entropy of the logits), and the outputs."""
        activities = self.forward_activities(x)
        outputs = activities[-1]
        if self.task == "autoencoder":
            signals = self.feedback_activities(target)
            return [F.mse_loss(a, b) for a, b in zip(activities, signals, strict=True)], outputs
        top = torch.eye(self.num_classes, device=x.device, dtype=outputs.dtype)
        signals = self.feedback_activities(top)
        keep = self.filter_mask(outputs, target)
        labels = F.one_hot(target, self.num_classes).to(outputs.dtype)
        losses = [self.similarity_loss(a, b, labels, keep) for a, b in zip(activities[:-1], signals[:-1], strict=True)]
        return [*losses, F.cross_entropy(outputs, target)], outputs

    def training_objective(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sum of the local losses (the warm-up factor is ``objective_scale``)."""
        losses, outputs = self.local_losses(x, target)
        stacked = torch.stack(losses)
        self.last_local_losses = stacked.detach()
        # The top local loss of a classifier is the loss of its outputs (the cross-entropy).
        loss = stacked[-1] if self.task == "classification" and self.loss_name == "ce" else self.loss(outputs, target)
        return stacked.sum(), loss.detach(), outputs

    def objective_scale(self) -> float:
        """The warm-up factor ``min(1, (batch + 1) / warmup_steps)`` (1 without warm-up)."""
        if not self.warmup_steps:
            return 1.0
        batches_done = self.trainer.global_step // len(self.trainer.optimizers)
        return min(1.0, (batches_done + 1) / self.warmup_steps)

    def log_train_metrics(self, loss: Tensor, logits: Tensor, target: Tensor, batch_idx: int) -> None:
        """Also log ``train/local_loss`` (the objective before warm-up) every
        ``log_every_n_steps`` batches."""
        super().log_train_metrics(loss, logits, target, batch_idx)
        every = self.trainer.log_every_n_steps
        if every and batch_idx % every == 0:
            self.log("train/local_loss", self.last_local_losses.sum())

    # --- optimization ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """The optimizers (one, or forward then feedback: ``merge_optimizers``) and their
        schedulers; every parameter group says which ``network`` it holds."""
        forward, feedback = self.network_optimizers()
        if self.merges_optimizers(forward, feedback):
            for group in feedback.param_groups:
                forward.add_param_group(group)
            configured = [(forward, self.lr_scheduler_factory)]
        else:
            self.check_loss_scaling(forward, feedback)
            configured = [(forward, self.lr_scheduler_factory), (feedback, self.feedback_lr_scheduler_factory)]
        schedulers = [
            {"scheduler": factory(optimizer), "interval": self.scheduler_interval, "monitor": "val/loss"}
            for optimizer, factory in configured
            if factory is not None
        ]
        return [optimizer for optimizer, _ in configured], schedulers

    def network_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """The forward and the feedback network's optimizers from their factories, on the
        fast kernels (``use_fast_kernels``), each group marked with its ``network``."""
        optimizers = []
        for factory, params, network in (
            (self.optimizer_factory, self.network.up_parameters(), "forward"),
            (self.feedback_optimizer_factory, self.network.down_parameters(), "feedback"),
        ):
            optimizer = use_fast_kernels(factory(params))
            for group in optimizer.param_groups:
                group["network"] = network
            optimizers.append(optimizer)
        return optimizers[0], optimizers[1]

    def merges_optimizers(self, forward: torch.optim.Optimizer, feedback: torch.optim.Optimizer) -> bool:
        """Whether one optimizer steps both networks (``merge_optimizers``), given the two
        networks' own optimizers; raises if it is True and they cannot share one."""
        if self.merge_optimizers is False:
            return False
        reason = self.separate_optimizers_reason(forward, feedback)
        if reason is not None and self.merge_optimizers:
            raise ValueError(f"merge_optimizers is true, but {reason}: set it to false or leave it unset")
        return reason is None

    def separate_optimizers_reason(self, forward: torch.optim.Optimizer, feedback: torch.optim.Optimizer) -> str | None:
        """Why the two networks need optimizers of their own (None: they can share one)."""
        kind = type(forward)
        if type(feedback) is not kind:
            return f"the networks' optimizers are of two classes ({kind.__qualname__}, {type(feedback).__qualname__})"
        if not kind.__module__.startswith("torch.optim.") or kind is torch.optim.LBFGS:
            return f"{kind.__qualname__} is not a torch.optim optimizer whose parameter groups step independently"
        unscaling = [getattr(optimizer, "_step_supports_amp_scaling", False) for optimizer in (forward, feedback)]
        if unscaling[0] != unscaling[1]:
            return "one network's optimizer was built with fused=True and the other's not"
        reason = schedule_mismatch(self.lr_scheduler_factory, self.feedback_lr_scheduler_factory, forward, feedback)
        if reason is not None:
            return reason
        plugin = self._trainer.precision_plugin if self._trainer is not None else None
        clipped = self.gradient_clip_val is not None or self.feedback_gradient_clip_val is not None
        if plugin is not None and type(plugin) not in PLAIN_PRECISIONS and clipped:
            return f"{type(plugin).__name__} clips all of an optimizer's parameters together"
        return None

    def check_loss_scaling(self, forward: torch.optim.Optimizer, feedback: torch.optim.Optimizer) -> None:
        """Refuse an optimizer per network under a loss scaler (16-mixed): Lightning updates
        the scale after each optimizer's step, so the feedback network's update would be
        unscaled with a scale the forward step has already changed."""
        if self._trainer is None or getattr(self.trainer.precision_plugin, "scaler", None) is None:
            return
        why = self.separate_optimizers_reason(forward, feedback) if self.merge_optimizers is None else None
        why = why or "merge_optimizers is false"
        raise ValueError(
            f"CounterCurrent under 16-mixed needs one optimizer for both networks (Lightning updates the loss scale "
            f"after each optimizer, which would unscale the feedback update wrongly), but {why}"
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming ``fit``: refuse optimizer states of the other layout (one optimizer or
        two) with a message, and name the networks of checkpoints saved before the groups
        said them (two optimizers: forward, feedback)."""
        super().on_load_checkpoint(checkpoint)
        states = checkpoint.get("optimizer_states")
        if not states or self._trainer is None or self.trainer.state.fn != "fit":
            return
        forward, feedback = self.network_optimizers()
        expected = 1 if self.merges_optimizers(forward, feedback) else 2
        if len(states) != expected:
            reason = self.separate_optimizers_reason(forward, feedback) if len(states) == 1 else None
            remedy = (
                f"resume with the run's own optimizer settings ({reason})"
                if reason
                else f"resume it with --model.init_args.merge_optimizers {str(len(states) == 1).lower()}"
            )
            raise ValueError(
                f"the checkpoint holds {len(states)} optimizer states and this CounterCurrent has {expected} "
                f"optimizer(s): {remedy}"
            )
        if expected == 2:
            for state, network in zip(states, ("forward", "feedback"), strict=True):
                for group in state["param_groups"]:
                    group.setdefault("network", network)

    def gradient_clip_sets(self, optimizer: torch.optim.Optimizer) -> list[tuple[list[Tensor], float]]:
        """Each network's parameters in ``optimizer`` with its own clip: the forward
        network's to ``gradient_clip_val``, the feedback network's to
        ``feedback_gradient_clip_val`` (each over its own global 2-norm)."""
        sets = []
        for network, clip in (("forward", self.gradient_clip_val), ("feedback", self.feedback_gradient_clip_val)):
            params = [p for group in optimizer.param_groups if group["network"] == network for p in group["params"]]
            if params and clip is not None:
                sets.append((params, clip))
        return sets

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.gradient_centralization:
            self._centralize_gradients(optimizer)
        super().on_before_optimizer_step(optimizer)

    @torch.no_grad()
    def _centralize_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Subtract from the update of every weight ``optimizer`` steps its mean over the
        inputs of the map it belongs to (``fan_in_dims``, read from its layer now: no
        state kept across steps, so copies and pickles of the module behave alike)."""
        stepped = {param for group in optimizer.param_groups for param in group["params"]}
        for layer in self.network.weighted_layers():
            for param in (layer.weight, layer.feedback_weight):
                if param in stepped and param.grad is not None:
                    param.grad.sub_(param.grad.mean(dim=layer.fan_in_dims(param), keepdim=True))


SCHEDULERS_OF_FUNCTIONS = (torch.optim.lr_scheduler.LambdaLR, torch.optim.lr_scheduler.MultiplicativeLR)
"""Schedulers whose state leaves out their functions (two of them cannot be compared)."""

PROBE_STEPS = 5
"""Scheduler steps ``schedule_mismatch`` compares the groups over."""


def schedule_mismatch(
    first: LRSchedulerCallable | None,
    second: LRSchedulerCallable | None,
    forward: torch.optim.Optimizer,
    feedback: torch.optim.Optimizer,
) -> str | None:
    """Why ``first`` (the forward network's scheduler factory) cannot schedule both networks'
    groups in one optimizer as ``first`` and ``second`` schedule them apart (None: it can).

    Built on throwaway copies of the groups (``probe_optimizer``): the schedulers ``first``
    and ``second`` make apart must be of one class with equal states (learning rates aside),
    and over ``PROBE_STEPS`` steps the merged groups' settings (learning rate, momentum, ...)
    must equal the separate ones'. Schedulers of functions (``LambdaLR``) are not compared."""
    if first is None or second is None:
        return None if first is None and second is None else "only one network has an LR schedule"
    kind = type(forward)
    probes = [
        probe_optimizer(kind, [*forward.param_groups, *feedback.param_groups]),
        probe_optimizer(kind, forward.param_groups),
        probe_optimizer(kind, feedback.param_groups),
    ]
    try:
        schedulers = [first(probes[0]), first(probes[1]), second(probes[2])]
    # Broad on purpose, and nothing is hidden: a factory that cannot build even apart fails again,
    # with its own error, when configure_optimizers builds two optimizers; one that fails only on
    # the merged groups (e.g. a per-group list argument with one entry) is a reason to keep two,
    # and that reason, the error included, is the message under merge_optimizers: true.
    except Exception as err:
        return f"the forward network's LR schedule cannot schedule both networks' groups ({err})"
    apart = schedulers[1:]
    if type(apart[0]) is not type(apart[1]) or isinstance(apart[0], SCHEDULERS_OF_FUNCTIONS):
        return "the networks' LR schedules differ (or hold functions, which cannot be compared)"
    states = [{k: v for k, v in s.state_dict().items() if k not in ("base_lrs", "_last_lr")} for s in apart]
    if states[0] != states[1]:
        return "the networks' LR schedules differ"
    for _ in range(PROBE_STEPS):
        if group_settings(probes[0]) != group_settings(probes[1]) + group_settings(probes[2]):
            return "the networks' LR schedules differ"
        for probe, scheduler in zip(probes, schedulers, strict=True):
            probe.step()  # no gradients: nothing changes, but the scheduler sees a step first
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(0.0)
            else:
                scheduler.step()
    return None


def probe_optimizer(kind: type[torch.optim.Optimizer], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """A ``kind`` optimizer over copies of ``groups``' settings (tensors cloned), each with one
    throwaway 1x1 parameter: schedulers built and stepped on it leave the real groups alone."""
    copies = [copy.deepcopy({k: v for k, v in group.items() if k != "params"}) for group in groups]
    return kind([{**settings, "params": [torch.zeros(1, 1, requires_grad=True)]} for settings in copies])


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each group's settings without its parameters, tensors as Python numbers."""
    return [
        {k: v.tolist() if isinstance(v, Tensor) else v for k, v in group.items() if k != "params"}
        for group in optimizer.param_groups
    ]
