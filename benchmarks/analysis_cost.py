"""Cost of the analysis callbacks (``lit_bioplaus.analysis``) on the Fashion-MNIST recipes.

    OMP_NUM_THREADS=1 python benchmarks/analysis_cost.py [--recipes ...] [--train-batches N] [--threads 1]

Each recipe trains one epoch through the CLI with the analysis callbacks of its shipped
config, made to fire at that epoch's end (``every_n_epochs`` set to 1 for the run). The
table gives, per callback, the wall clock of one call (its whole ``on_train_epoch_end``
hook) and that time divided by the config's ``every_n_epochs``, as a share of one epoch: the
training loop plus the validation loop, analysis excluded. With ``--train-batches N`` only
``N`` training batches run and the training loop's time is scaled to the full epoch.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from lit_bioplaus.analysis import AnalysisCallback, SubnetworkMaps, figure_image
from lit_bioplaus.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = (
    "configs/ch/mlp500_fashion_mnist_sym.yaml",
    "configs/ch/mlp500_fashion_mnist_asym.yaml",
    "configs/fa/mlp500_fashion_mnist.yaml",
    "configs/ccl/mlp256x6_fashion_mnist.yaml",
    "configs/ch/multi_fashion_mnist_sym.yaml",
)

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


class LoopClock(L.Callback):
    """Wall clock of the epoch's training loop (epoch start to the last batch's end) and of
    its validation loop (run once, at the epoch's end: no sanity check; 0 without one)."""

    def __init__(self) -> None:
        self.marks = dict.fromkeys(("train", "train_end", "validation", "validation_end"), 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks["train"] = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        self.marks["train_end"] = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks["validation"] = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.marks["validation_end"] = time.perf_counter()

    def seconds(self) -> tuple[float, float]:
        """``(training loop, validation loop)`` seconds."""
        marks = self.marks
        return marks["train_end"] - marks["train"], marks["validation_end"] - marks["validation"]


Analysis = AnalysisCallback | SubnetworkMaps


@dataclass
class Cost:
    callback: str
    every_n_epochs: int
    seconds: float = 0.0


def timed(callback: Analysis) -> Cost:
    """Make ``callback`` fire every epoch and time its ``on_train_epoch_end`` into the result."""
    cost = Cost(type(callback).__name__, callback.every_n_epochs)
    callback.every_n_epochs = 1
    hook: Callable[[L.Trainer, L.LightningModule], None] = callback.on_train_epoch_end

    def on_train_epoch_end(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = time.perf_counter()
        hook(trainer, pl_module)
        cost.seconds = time.perf_counter() - start

    callback.on_train_epoch_end = on_train_epoch_end  # type: ignore[method-assign]
    return cost


def measure(recipe: str, train_batches: int | None, data_dir: str | None) -> tuple[float, list[Cost]]:
    """``(seconds of one full epoch, per-callback costs)`` of ``recipe``."""
    with tempfile.TemporaryDirectory() as folder:
        args = ["--config", str(ROOT / recipe), "--trainer.max_epochs", "1", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", folder]  # fmt: skip
        if train_batches is not None:
            args += ["--trainer.limit_train_batches", str(train_batches)]
        if data_dir is not None:
            args += ["--data.init_args.data_dir", data_dir]
        run = cli(args, run=False)
        costs = [timed(c) for c in run.trainer.callbacks if isinstance(c, (AnalysisCallback, SubnetworkMaps))]
        clock = LoopClock()
        run.trainer.callbacks.append(clock)
        run.trainer.fit(run.model, datamodule=run.datamodule)
        train, validation = clock.seconds()
        full_batches = len(run.datamodule.train_dataloader())
        return train * full_batches / run.trainer.num_training_batches + validation, costs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--train-batches", type=int, default=None, help="training batches run (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None, help="the recipes' data_dir (default: theirs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warm_up = Figure()
    warm_up.suptitle("fonts")
    figure_image(warm_up)  # matplotlib's one-time start-up (font cache) is no callback's cost
    rows = []
    with threadpool_limits(args.threads):
        for recipe in args.recipes:
            rows.append((recipe, *measure(recipe, args.train_batches, args.data_dir)))
    print(f"\nAnalysis callbacks, CPU threads={args.threads}, one call each; % = s per call / every / epoch s")
    print("\n| recipe | epoch s | callback | every | s per call | % of an epoch |")
    print("|---|---:|---|---:|---:|---:|")
    for recipe, epoch, costs in rows:
        for cost in costs:
            share = 100 * cost.seconds / cost.every_n_epochs / epoch
            cells = f"{cost.callback} | {cost.every_n_epochs} | {cost.seconds:.3f} | {share:.2f}"
            print(f"| {recipe} | {epoch:.1f} | {cells} |")
        total = 100 * sum(cost.seconds / cost.every_n_epochs for cost in costs) / epoch
        print(f"| {recipe} | {epoch:.1f} | **all** | | | **{total:.2f}** |")


if __name__ == "__main__":
    main()
