"""Milliseconds per training step on the 784-500-10 MLP.

    python benchmarks/step_time.py [--steps 600] [--batch-sizes 20 256] [--threads 2]

Table 1: BackProp through Lightning versus a plain PyTorch loop on the same model,
data and optimizer. Both draw batches from the same in-memory DataLoader, run
forward, loss, backward and an Adam step, and update the same torchmetrics accuracy
(``update`` only, as the modules do);
the Lightning path also logs the loss and shows no progress bar (``--progress-bar``
turns it on).

Table 2: every learning rule (BP, CH symmetric and asymmetric, FA, DFA) through
Lightning on the same network, as ratios to BP.

Steps are timed after a warm-up, wall clock, median of ``--repeats`` rounds (each round
times every column once, so drifts in machine speed affect all columns alike).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_bioplaus.algorithms import (
    BackProp,
    BioplausModule,
    CounterHebb,
    DirectFeedbackAlignment,
    FeedbackAlignment,
)
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


def make_model(algorithm: str = "BP") -> BioplausModule:
    cls, weight_mode = ALGORITHMS[algorithm]
    return cls(
        network=lambda shape, classes: MLP(shape, classes, hidden=[500], weight_mode=weight_mode),
        num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPE,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
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


def _lightning_ms_of_rule(algorithm: str, batch_size: int, steps: int, warmup: int, progress_bar: bool) -> float:
    return lightning_ms_per_step(make_model(algorithm), batch_size, steps, warmup, progress_bar)


def plain_ms_per_step(batch_size: int, steps: int, warmup: int) -> float:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    start = 0.0
    for step, (x, target) in enumerate(make_loader(batch_size, batch_size * (warmup + steps))):
        if step == warmup:
            start = time.perf_counter()
        optimizer.zero_grad()
        logits = model(x)
        loss = model.loss(logits, target)
        loss.backward()
        optimizer.step()
        model.train_metric.update(logits.detach(), target)
    return (time.perf_counter() - start) / steps * 1e3


def median_ms_round_robin(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of ``repeats`` rounds of every measure, each round running every measure once
    (round robin: slow drifts in machine speed hit every column alike)."""
    times: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            times[name].append(measure())
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 256])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--progress-bar", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    frameworks, algorithms = [], []
    for batch_size in args.batch_sizes:
        timing = (batch_size, args.steps, args.warmup)
        measures = {"plain": partial(plain_ms_per_step, *timing)}
        for name in ALGORITHMS:
            measures[name] = partial(_lightning_ms_of_rule, name, *timing, args.progress_bar)
        medians = median_ms_round_robin(measures, args.repeats)
        plain = medians.pop("plain")
        frameworks.append((batch_size, plain, medians["BP"]))
        algorithms.append((batch_size, medians))

    print(f"\nMLP 784-500-10, Adam, CPU threads={args.threads}, {args.steps} timed steps, median of {args.repeats}")
    print("\n| batch | plain PyTorch BP ms/step | Lightning BP ms/step | Lightning / plain |")
    print("|------:|-------------------------:|---------------------:|------------------:|")
    for batch_size, plain, lightning in frameworks:
        print(f"| {batch_size:5d} | {plain:24.3f} | {lightning:20.3f} | {lightning / plain:17.2f} |")
    print("\n| batch | " + " | ".join(f"{name} ms (x BP)" for name in ALGORITHMS) + " |")
    print("|------:|" + "|".join("---:" for _ in ALGORITHMS) + "|")
    for batch_size, per_algorithm in algorithms:
        bp = per_algorithm["BP"]
        cells = [f"{ms:.3f} ({ms / bp:.2f})" for ms in per_algorithm.values()]
        print(f"| {batch_size:5d} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
