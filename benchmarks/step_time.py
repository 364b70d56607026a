"""Milliseconds per training step on the paper's MLPs, through Lightning and outside it.

    python benchmarks/step_time.py [--steps 600] [--batch-sizes 32 256] [--threads 1] [--tables ccl]
    python benchmarks/step_time.py --profile CCL --batch-sizes 256 --steps 200

Table 1 (``framework``): BackProp on the 784-500-10 MLP through Lightning versus a plain
PyTorch loop on the same model, data and optimizer. Both draw batches from the same
in-memory DataLoader, run forward, loss, backward and an Adam step, and update a
torchmetrics accuracy (``update`` only, as the modules do); the Lightning path also logs
the loss and shows no progress bar (``--progress-bar`` turns it on).

Table 2 (``rules``): every learning rule (BP, CH symmetric and asymmetric, FA, DFA) through
Lightning on the same network, as ratios to BP.

Table 3 (``ccl``): Counter-Current learning on the paper's MNIST MLP (784-256x5-10, ELU, no
bias, the recipe of ``configs/ccl/mlp256x6_fashion_mnist.yaml``) and Counter-Hebb (shared
and asymmetric weights) on the 784-500-10 MLP:

* (a) Lightning: the module through ``Trainer.fit``;
* (b) bare step: the same module in a plain Python loop over the same DataLoader:
  ``training_objective``, ``zero_grad``, ``backward``, the module's gradient-norm clips
  (``clip_gradient_sets_`` of its ``gradient_clip_sets``) and ``step`` of the optimizers of
  its own ``configure_optimizers``, and ``train_statistics.update``; a / b is what
  Lightning adds;
* (c) plain CCL (CCL rows only): Counter-Current learning written as the official code
  writes it (github.com/IandRover/CCL-NeurIPS24, ``main_class_mlp.py``), own ``nn.Linear``
  forward and backward layers, default ``SGD`` and ``clip_grad_norm_``: ``PlainCCLMLP``;
  a / c is the whole price of the library against a hand-written loop;
* (a2) CCL rows: (a) with an optimizer per network (``merge_optimizers: false``, the layout
  before one optimizer held both networks);
* (f) Lightning's floor: ``Trainer.fit`` of ``EmptyModule`` (a training step that does nothing)
  less a bare pass over the same DataLoader, the fit loop's own cost per step, which every
  module pays; ``(b + f) / b`` is the lowest a / b any module could reach.

``--profile RULE`` instead times ``--steps`` Lightning steps of one rule at the first of
``--batch-sizes`` and splits the step into categories (the rule's own update, optimizer and
backward wrappers, clipping, metrics, logging, data, the fit loop): ``profile_lightning_steps``.

Steps are timed after a warm-up, wall clock, with ``--threads`` CPU threads (default 1),
median of ``--repeats`` rounds; each round times every column of a table once (round robin:
drifts in machine speed affect all columns alike).
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from itertools import pairwise
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from lit_bioplaus.algorithms import (
    BackProp,
    BioplausModule,
    CounterCurrent,
    CounterHebb,
    DirectFeedbackAlignment,
    FeedbackAlignment,
)
from lit_bioplaus.algorithms.base import clip_gradient_sets_
from lit_bioplaus.data import InMemoryImageDataset, collate
from lit_bioplaus.nn import MLP

ALGORITHMS: dict[str, tuple[type[BioplausModule], str]] = {
    "BP": (BackProp, "shared"),
    "CH sym": (CounterHebb, "shared"),
    "CH asym": (CounterHebb, "asymmetric"),
    "FA": (FeedbackAlignment, "fixed"),
    "DFA": (DirectFeedbackAlignment, "shared"),
}

INPUT_SHAPE, NUM_CLASSES = (1, 28, 28), 10
CCL_HIDDEN, CCL_SIMILARITY_SCALE, CCL_LR, CCL_CLIP = [256] * 5, 128.0, 1.0, 1.0
NETWORKS = {"CCL": "784-256x5-10 ELU", **{name: "784-500-10 ReLU" for name in ALGORITHMS}}
CCL_TABLE_RULES = ("CCL", "CH sym", "CH asym")

# The tables are the output: keep Lightning's per-fit notices and warnings out of them.
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")


def make_loader(
    batch_size: int, num_samples: int, input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES
) -> DataLoader:
    """Random uint8 images and labels served like the DataModules serve them."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_samples, *input_shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    channels = input_shape[0]
    dataset = InMemoryImageDataset(images, labels, mean=(0.5,) * channels, std=(0.25,) * channels)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate)


def make_model(algorithm: str = "BP", compile: bool = False, **ccl_options: Any) -> BioplausModule:
    """``algorithm`` (a key of ``ALGORITHMS``, or ``"CCL"``: ``make_ccl_model`` with
    ``ccl_options``) on the 784-500-10 ReLU MLP with Adam 1e-4 (``compile``: its objective
    through torch.compile)."""
    if algorithm == "CCL":
        return make_ccl_model(compile, **ccl_options)
    cls, weight_mode = ALGORITHMS[algorithm]
    return cls(
        network=lambda shape, classes: MLP(shape, classes, hidden=[500], weight_mode=weight_mode),
        num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPE,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
        compile=compile,
    )


def make_ccl_model(compile: bool = False, merge_optimizers: bool | None = None) -> CounterCurrent:
    """The paper's MNIST recipe (``configs/ccl/mlp256x6_fashion_mnist.yaml``): 784-256x5-10,
    ELU, no biases, separate feedback weights, dot similarity scaled by 128, both networks
    trained by SGD lr 1 with gradient-norm clip 1 (one optimizer with a group per network,
    or two with ``merge_optimizers=False``)."""
    return CounterCurrent(
        compile=compile,
        merge_optimizers=merge_optimizers,
        network=partial(MLP, hidden=CCL_HIDDEN, activation="elu", bias=False, weight_mode="asymmetric"),
        num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPE,
        similarity="dot",
        similarity_scale=CCL_SIMILARITY_SCALE,
        optimizer=partial(torch.optim.SGD, lr=CCL_LR),
        gradient_clip_val=CCL_CLIP,
        feedback_optimizer=partial(torch.optim.SGD, lr=CCL_LR),
        feedback_gradient_clip_val=CCL_CLIP,
    )


class _StepTimer(L.Callback):
    """Wall-clock time of the training batches after the first ``warmup`` (a batch is
    one training step of any rule, whatever number of optimizers it steps)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        _synchronize(pl_module.device)
        self.end = time.perf_counter()


def _synchronize(device: torch.device) -> None:
    """Wait for the queued GPU work (timings of asynchronous devices)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lightning_ms_per_step(
    model: BioplausModule,
    batch_size: int,
    steps: int,
    warmup: int,
    progress_bar: bool,
    loader: DataLoader | None = None,
    accelerator: str = "cpu",
    precision: str = "32-true",
) -> float:
    """Milliseconds per training step of ``model`` through ``Trainer.fit`` on ``loader``
    (default: random data of the model's input shape), ``warmup`` untimed steps first, on
    ``accelerator`` (e.g. ``"gpu"``) in ``precision`` (e.g. ``"bf16-mixed"``)."""
    timer = _StepTimer(warmup)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    if loader is None:
        loader = make_loader(batch_size, batch_size * (warmup + steps), model.input_shape, model.num_classes)
    trainer.fit(model, loader)
    return (timer.end - timer.start) / steps * 1e3


def _lightning_ms_of_rule(
    algorithm: str, batch_size: int, steps: int, warmup: int, progress_bar: bool, compile: bool = False, **options: Any
) -> float:
    return lightning_ms_per_step(make_model(algorithm, compile, **options), batch_size, steps, warmup, progress_bar)


def loop_ms_per_step(
    loader: DataLoader, steps: int, warmup: int, step: Callable[[Tensor, Tensor], object] | None = None
) -> float:
    """Milliseconds per batch of a plain Python loop over ``loader`` calling ``step(x,
    target)`` on each batch (nothing when None: the bare pass over the data), ``warmup``
    untimed batches first."""
    start = 0.0
    for index, (x, target) in enumerate(loader):
        if index == warmup:
            start = time.perf_counter()
        if step is not None:
            step(x, target)
    return (time.perf_counter() - start) / steps * 1e3


def plain_ms_per_step(batch_size: int, steps: int, warmup: int) -> float:
    """BP in a plain PyTorch loop: the BP module's network and loss, its own Adam and a
    torchmetrics accuracy (``update`` only)."""
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    accuracy = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
    model.train()

    def step(x: Tensor, target: Tensor) -> None:
        optimizer.zero_grad()
        logits = model(x)
        loss = model.loss(logits, target)
        loss.backward()
        optimizer.step()
        accuracy.update(logits.detach(), target)

    return loop_ms_per_step(make_loader(batch_size, batch_size * (warmup + steps)), steps, warmup, step)


# --- (b) the module's own step, without Lightning ---------------------------------------------
def module_optimizers(model: BioplausModule) -> list[torch.optim.Optimizer]:
    """The optimizers of ``model.configure_optimizers()`` (any of Lightning's return forms
    used here: an optimizer, a dict, or ``(optimizers, schedulers)``)."""
    configured = model.configure_optimizers()
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    optimizers = configured[0] if isinstance(configured, tuple) else configured
    return list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]


def bare_step(model: BioplausModule, optimizers: Sequence[torch.optim.Optimizer], x: Tensor, target: Tensor) -> None:
    """One training step of ``model`` in the order of ``BioplausModule.training_step``,
    without Lightning: objective, ``zero_grad``, backward, then per optimizer the clip (as
    ``on_before_optimizer_step`` under the plain precision plugins: ``clip_gradient_sets_``
    of the module's ``gradient_clip_sets``) and ``step``; then the training statistics."""
    objective, loss, logits = model.training_objective(x, target)
    for optimizer in optimizers:
        optimizer.zero_grad()
    objective.backward()
    for optimizer in optimizers:
        clip_gradient_sets_(model.gradient_clip_sets(optimizer))
        optimizer.step()
    model.train_statistics.update(loss, logits.detach(), target)


def bare_ms_per_step(model: BioplausModule, batch_size: int, steps: int, warmup: int) -> float:
    """Milliseconds per ``bare_step`` of ``model`` on the DataLoader ``lightning_ms_per_step``
    uses, ``warmup`` untimed steps first."""
    optimizers = module_optimizers(model)
    model.train()
    loader = make_loader(batch_size, batch_size * (warmup + steps), model.input_shape, model.num_classes)
    return loop_ms_per_step(loader, steps, warmup, partial(bare_step, model, optimizers))


def _bare_ms_of_rule(algorithm: str, batch_size: int, steps: int, warmup: int) -> float:
    return bare_ms_per_step(make_model(algorithm), batch_size, steps, warmup)


# --- (f) what Lightning costs a module that does nothing ---------------------------------------
class EmptyModule(L.LightningModule):
    """The least a LightningModule can be: manual optimization, one parameter that no step
    updates, a training step that does nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def lightning_floor_ms(batch_size: int, steps: int, warmup: int, progress_bar: bool = False) -> float:
    """Lightning's own cost per training step (f): ``EmptyModule`` through ``Trainer.fit`` (with
    the progress bar if ``progress_bar``, as the modules' column) less a bare pass over the same
    DataLoader (``make_loader``), in milliseconds."""
    loader = make_loader(batch_size, batch_size * (warmup + steps))
    fit = lightning_ms_per_step(EmptyModule(), batch_size, steps, warmup, progress_bar, loader=loader)
    return fit - loop_ms_per_step(loader, steps, warmup)


# --- (c) Counter-Current learning as the official code writes it ------------------------------
class PlainCCLMLP(nn.Module):
    """The official code's CCL MLP in plain PyTorch: per layer a forward ``nn.Linear(in,
    out)`` and a backward ``nn.Linear(out, in)``, no biases, ELU after every forward layer
    but the top one and every backward layer but the bottom one; every layer input is
    detached, so each local loss trains only the two layers that produced its arguments.

    ``forward(x)`` returns ``[x, a_1, ..., a_{L-1}, logits]``; ``reverse(top)`` runs the
    backward layers down from ``top`` (the ``C`` class one-hots) and returns ``[b_0, ...,
    b_{L-1}, top]``, the signals at the same points.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.forward_layers = nn.ModuleList(nn.Linear(w_in, w_out, bias=False) for w_in, w_out in pairwise(widths))
        self.backward_layers = nn.ModuleList(nn.Linear(w_out, w_in, bias=False) for w_in, w_out in pairwise(widths))

    def forward(self, x: Tensor) -> list[Tensor]:
        activations = [x]
        for index, layer in enumerate(self.forward_layers):
            out = layer(activations[-1].detach())
            activations.append(out if index == len(self.forward_layers) - 1 else F.elu(out))
        return activations

    def reverse(self, top: Tensor) -> list[Tensor]:
        signals = [top]
        for index in reversed(range(len(self.backward_layers))):
            out = self.backward_layers[index](signals[0].detach())
            signals.insert(0, out if index == 0 else F.elu(out))
        return signals

    @classmethod
    def copy_of(cls, model: CounterCurrent) -> PlainCCLMLP:
        """A plain MLP with ``model``'s weights (an MLP's weighted layers: forward ``W``
        and feedback ``Wb`` in the forward layout, i.e. the backward layer's ``Wb^T``),
        in their dtype."""
        layers = model.network.weighted_layers()
        plain = cls([layers[0].in_features, *(layer.out_features for layer in layers)])
        plain.to(layers[0].weight.dtype)
        with torch.no_grad():
            for forward, backward, layer in zip(plain.forward_layers, plain.backward_layers, layers, strict=True):
                forward.weight.copy_(layer.weight)
                backward.weight.copy_(layer.feedback_weight.T)
        return plain


def plain_ccl_loss(
    activations: list[Tensor], signals: list[Tensor], target: Tensor, scale: float = CCL_SIMILARITY_SCALE
) -> Tensor:
    """The official classification loss: at every point but the top, ``scale * mse(A B^T,
    Y) / d`` with ``Y`` the ``N x C`` label indicator and ``d`` the width; then the
    cross-entropy of the logits; summed."""
    labels = F.one_hot(target, signals[-1].shape[0]).to(activations[-1].dtype)
    losses = []
    for a, b in zip(activations[:-1], signals[:-1], strict=True):
        a, b = a.view(len(a), -1), b.view(len(b), -1)
        losses.append(F.mse_loss(a @ b.T, labels) / a.shape[1] * scale)
    losses.append(F.cross_entropy(activations[-1], target))
    return sum(losses)


def plain_ccl_optimizers(net: PlainCCLMLP, lr: float = CCL_LR) -> tuple[torch.optim.SGD, torch.optim.SGD]:
    """Default ``torch.optim.SGD`` of each network (no momentum, per-tensor loop on CPU)."""
    return torch.optim.SGD(net.forward_layers.parameters(), lr=lr), torch.optim.SGD(
        net.backward_layers.parameters(), lr=lr
    )


def plain_ccl_step(
    net: PlainCCLMLP,
    forward_optimizer: torch.optim.Optimizer,
    backward_optimizer: torch.optim.Optimizer,
    data: Tensor,
    target: Tensor,
    clip: float = CCL_CLIP,
) -> Tensor:
    """One step of the official training loop: forward with detached inputs, feedback from
    the class one-hots, the summed local losses, one ``backward``, ``clip_grad_norm_`` of
    each network, both ``SGD`` steps. Returns the loss. (The official loop also reads the
    top loss with ``.item()`` every step, a host-device sync on a GPU: left out.)"""
    x = data.view(len(data), -1)
    top = F.one_hot(torch.arange(net.backward_layers[-1].in_features), net.backward_layers[-1].in_features)
    activations = net(x)
    signals = net.reverse(top.to(x.dtype))
    loss = plain_ccl_loss(activations, signals, target)
    forward_optimizer.zero_grad(), backward_optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.forward_layers.parameters(), clip)
    torch.nn.utils.clip_grad_norm_(net.backward_layers.parameters(), clip)
    forward_optimizer.step(), backward_optimizer.step()
    return loss


def plain_ccl_ms_per_step(batch_size: int, steps: int, warmup: int) -> float:
    """Milliseconds per ``plain_ccl_step`` (weights of a fresh ``make_ccl_model``) on the
    DataLoader the module's columns use."""
    net = PlainCCLMLP.copy_of(make_ccl_model())
    optimizers = plain_ccl_optimizers(net)
    net.train()
    loader = make_loader(batch_size, batch_size * (warmup + steps))
    return loop_ms_per_step(loader, steps, warmup, partial(plain_ccl_step, net, *optimizers))


def median_ms_round_robin(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of ``repeats`` rounds of every measure, each round running every measure once
    (round robin: slow drifts in machine speed hit every column alike)."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            times[name].append(measure())
    return {name: statistics.median(values) for name, values in times.items()}


# --- --profile: where a Lightning step's time goes --------------------------------------------
PROFILE_CATEGORIES: dict[str, tuple[str, bool]] = {
    "objective": ("rule: training_objective (forward, the rule's passes)", True),
    "backward": ("rule: backward (autograd, LightningModule.backward)", True),
    "optimizer": ("rule: torch optimizer.step (update)", True),
    "zero_grad": ("zero_grad", True),
    "clipping": ("clipping (on_before_optimizer_step)", True),
    "metrics": ("metrics: train_statistics.update", True),
    "data": ("data: dataset __getitems__ (index, normalise)", True),
    "metrics glue": ("metrics glue: log_train_metrics (scores, ...)", False),
    "logging": ("logging: self.log, check_finite (every log_every_n_steps)", False),
    "optimizer wrappers": ("optimizer wrappers: LightningOptimizer.step, strategy, precision, hooks", False),
    "backward wrappers": ("backward wrappers: manual_backward, strategy, precision, hooks", False),
    "step glue": ("training_step glue: optimizers(), split_batch, step_scheduler", False),
    "epoch end": ("epoch end: on_train_epoch_end (compute, log), once", False),
}
"""Category -> (description, whether the bare step (b) does the same work)."""


class _ExclusiveTimer:
    """Wall-clock time of wrapped calls by category, each call's time less the time of the
    wrapped calls inside it (so nested categories do not count twice); recorded while
    ``recording``."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.recording = False
        self._inner: list[float] = []

    def wrap(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                if self.recording:
                    self.totals[category] += elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed

        return timed

    def patch(self, obj: Any, name: str, category: str) -> None:
        """Time ``obj.name`` (an instance attribute shadowing the method)."""
        setattr(obj, name, self.wrap(category, getattr(obj, name)))


class _ProfiledSteps(_StepTimer):
    """``_StepTimer`` that also times the optimizers' calls by category once the trainer
    has wrapped them (and the precision plugin's hooks that run inside the torch step),
    and records from the first timed batch on."""

    def __init__(self, warmup: int, timer: _ExclusiveTimer) -> None:
        super().__init__(warmup)
        self.timer = timer

    def on_train_start(self, trainer, pl_module) -> None:
        optimizers = pl_module.optimizers()
        for wrapped in optimizers if isinstance(optimizers, list) else [optimizers]:
            self.timer.patch(wrapped, "step", "optimizer wrappers")
            self.timer.patch(wrapped, "zero_grad", "zero_grad")
            self.timer.patch(wrapped.optimizer, "step", "optimizer")
        # the hooks Lightning runs inside the torch optimizer's step (through its closure)
        self.timer.patch(trainer.strategy.precision_plugin, "_after_closure", "optimizer wrappers")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if batch_idx == self.warmup:
            self.timer.recording = True


def profile_lightning_steps(model: BioplausModule, batch_size: int, steps: int, warmup: int) -> dict[str, float]:
    """Milliseconds per Lightning training step of ``model`` by ``PROFILE_CATEGORIES``
    (``"total"``: the whole step, as ``lightning_ms_per_step``; ``"fit loop"``: the rest:
    the loop's bookkeeping, hooks and callbacks, the data fetcher).

    The module's methods, its training statistics, the dataset and (once the trainer has
    wrapped them) its optimizers are timed by wrappers of about a microsecond each, not
    by a sampling or tracing profiler (cProfile would inflate the Python-heavy Lightning
    code it is meant to measure)."""
    timer = _ExclusiveTimer()
    for name, category in [
        ("training_objective", "objective"),
        ("backward", "backward"),
        ("manual_backward", "backward wrappers"),
        ("on_before_optimizer_step", "clipping"),
        ("log_train_metrics", "metrics glue"),
        ("log", "logging"),
        ("check_finite", "logging"),
        ("training_step", "step glue"),
        ("on_train_epoch_end", "epoch end"),
    ]:
        timer.patch(model, name, category)
    timer.patch(model.train_statistics, "update", "metrics")
    loader = make_loader(batch_size, batch_size * (warmup + steps), model.input_shape, model.num_classes)
    timer.patch(loader.dataset, "__getitems__", "data")
    callback = _ProfiledSteps(warmup, timer)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[callback],
    )
    trainer.fit(model, loader)
    total = (callback.end - callback.start) / steps * 1e3
    per_step = {category: timer.totals.get(category, 0.0) / steps * 1e3 for category in PROFILE_CATEGORIES}
    return {**per_step, "fit loop": total - sum(per_step.values()), "total": total}


def print_profile(rule: str, batch_size: int, steps: int, warmup: int, threads: int) -> None:
    """Profile one rule (a key of ``NETWORKS``) and print the table, with the bare step of
    the same rule beside it (what Lightning adds is total - bare)."""
    profile = profile_lightning_steps(make_model(rule), batch_size, steps, warmup)
    bare = bare_ms_per_step(make_model(rule), batch_size, steps, warmup)
    total = profile.pop("total")
    print(
        f"\nProfile of {rule} ({NETWORKS[rule]}), batch {batch_size}: {steps} Lightning steps after {warmup} "
        f"warm-up, CPU threads={threads}, one run; wall clock per category, each call less the categories "
        "inside it\n"
    )
    print("| category | in bare step (b) | ms/step | % of step |")
    print("|:--|:-:|--:|--:|")
    rows = [(*PROFILE_CATEGORIES[c], ms) for c, ms in profile.items() if c in PROFILE_CATEGORIES]
    rows.append(("fit loop: bookkeeping, hooks, callbacks, data fetcher (the rest)", False, profile["fit loop"]))
    for description, in_bare, ms in rows:
        print(f"| {description} | {'yes' if in_bare else 'no'} | {ms:.3f} | {100 * ms / total:.1f} |")
    print(f"| **Lightning step (a)** | | **{total:.3f}** | 100.0 |")
    outside = sum(ms for _, in_bare, ms in rows if not in_bare)
    print(
        f"\nCategories the bare step does not have: {outside:.3f} ms/step; bare step (b), measured "
        f"separately: {bare:.3f} ms/step, a - b = {total - bare:.3f} ms/step."
    )


def header(args: argparse.Namespace) -> str:
    return (
        f"CPU threads={args.threads}, {args.steps} timed steps after {args.warmup} warm-up, median of "
        f"{args.repeats} rounds, columns timed round robin"
    )


def print_ccl_table(args: argparse.Namespace) -> None:
    rows = []
    for batch_size in args.batch_sizes:
        timing = (batch_size, args.steps, args.warmup)
        measures: dict[str, Callable[[], float]] = {}
        for rule in CCL_TABLE_RULES:
            measures[f"{rule} a"] = partial(_lightning_ms_of_rule, rule, *timing, args.progress_bar)
            measures[f"{rule} b"] = partial(_bare_ms_of_rule, rule, *timing)
        measures["CCL a2"] = partial(_lightning_ms_of_rule, "CCL", *timing, args.progress_bar, merge_optimizers=False)
        measures["CCL c"] = partial(plain_ccl_ms_per_step, *timing)
        measures["floor"] = partial(lightning_floor_ms, *timing, args.progress_bar)
        if args.compile:  # the warm-up steps hold the compilation (about 20 s a model)
            measures["CCL a*"] = partial(_lightning_ms_of_rule, "CCL", *timing, args.progress_bar, True)
        medians = median_ms_round_robin(measures, args.repeats)
        rows += [
            (
                rule,
                batch_size,
                medians["floor"],
                *(medians.get(f"{rule} {column}") for column in ("a", "b", "c", "a2", "a*")),
            )
            for rule in CCL_TABLE_RULES
        ]
    print(f"\nCounter-Current and Counter-Hebb, Lightning versus the bare step and plain CCL; {header(args)}")
    print("CCL: SGD lr 1, clip 1 (both networks), dot similarity x128; CH: Adam 1e-4\n")
    compiled = " Lightning, compile: true (a*) | a* / c |" if args.compile else ""
    print(
        "| rule | network | batch | Lightning ms/step (a) | bare step ms (b) | a / b | Lightning floor ms (f) |"
        " lowest a / b: (b + f) / b | plain CCL ms (c) | a / c | two optimizers (a2) | a2 / c |" + compiled
    )
    print("|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|" + ("--:|--:|" if args.compile else ""))
    for rule, batch_size, floor, a, b, c, a_two, a_compiled in rows:
        plain = f"{c:.3f} | {a / c:.2f} | {a_two:.3f} | {a_two / c:.2f}" if c is not None else "- | - | - | -"
        line = (
            f"| {rule} | {NETWORKS[rule]} | {batch_size} | {a:.3f} | {b:.3f} | {a / b:.2f} | {floor:.3f} | "
            f"{(b + floor) / b:.2f} | {plain} |"
        )
        if args.compile:
            line += f" {a_compiled:.3f} | {a_compiled / c:.2f} |" if a_compiled is not None else " - | - |"
        print(line)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads); default 1")
    parser.add_argument("--progress-bar", action="store_true")
    parser.add_argument("--compile", action="store_true", help="CCL table: also CCL with compile: true (a*)")
    parser.add_argument(
        "--tables", nargs="+", choices=["framework", "rules", "ccl"], default=["framework", "rules", "ccl"]
    )
    parser.add_argument(
        "--profile",
        choices=list(NETWORKS),
        help="profile this rule's Lightning step at the first of --batch-sizes (--steps steps), print no tables",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.profile:
        print_profile(args.profile, args.batch_sizes[0], args.steps, args.warmup, args.threads)
        return
    if "framework" in args.tables or "rules" in args.tables:
        frameworks, algorithms = [], []
        for batch_size in args.batch_sizes:
            timing = (batch_size, args.steps, args.warmup)
            measures = {"plain": partial(plain_ms_per_step, *timing)} if "framework" in args.tables else {}
            for name in ALGORITHMS if "rules" in args.tables else ["BP"]:
                measures[name] = partial(_lightning_ms_of_rule, name, *timing, args.progress_bar)
            medians = median_ms_round_robin(measures, args.repeats)
            if "framework" in args.tables:
                frameworks.append((batch_size, medians.pop("plain"), medians["BP"]))
            algorithms.append((batch_size, medians))
        print(f"\nMLP 784-500-10, Adam; {header(args)}")
        if "framework" in args.tables:
            print("\n| batch | plain PyTorch BP ms/step | Lightning BP ms/step | Lightning / plain |")
            print("|------:|-------------------------:|---------------------:|------------------:|")
            for batch_size, plain, lightning in frameworks:
                print(f"| {batch_size:5d} | {plain:24.3f} | {lightning:20.3f} | {lightning / plain:17.2f} |")
        if "rules" in args.tables:
            print("\n| batch | " + " | ".join(f"{name} ms (x BP)" for name in ALGORITHMS) + " |")
            print("|------:|" + "|".join("---:" for _ in ALGORITHMS) + "|")
            for batch_size, per_algorithm in algorithms:
                bp = per_algorithm["BP"]
                cells = [f"{ms:.3f} ({ms / bp:.2f})" for ms in per_algorithm.values()]
                print(f"| {batch_size:5d} | " + " | ".join(cells) + " |")
    if "ccl" in args.tables:
        print_ccl_table(args)


if __name__ == "__main__":
    main()
