"""Training throughput (images per second) of every learning rule on the conv and ResNet recipes.

    python benchmarks/throughput.py --threads 1
    python benchmarks/throughput.py --recipes resnet --width 64 --resnet-batch-sizes 100
    python benchmarks/throughput.py --accelerator gpu --precision bf16-mixed --steps 50 [--compile]

Every rule through Lightning (``step_time.lightning_ms_per_step``) on random data of its
recipe's shape, each recipe's optimizer, clip and schedule as in its config:

* ``conv32x2`` (``configs/{bp,ch,fa}/conv32x2_cifar10*.yaml``): the Counter-Hebb paper's
  ``ConvNet``, two 3x3 stride-2 convolutions of 32 channels, ReLU, linear head, CIFAR-10
  32x32, Adam 1e-4, batch 256: BP, CH sym, CH asym, FA, DFA;
* ``cnn5`` (``configs/ccl/cnn5_cifar10.yaml`` and its BP twin ``configs/bp/cnn5_cifar10.yaml``):
  the Counter-Current paper's ``PooledConvNet`` (128-128-256-256-512, pooling, ELU, no
  bias), SGD lr 1 momentum 0.8, clip 0.3, batch 128: BP, CCL (cosine similarity,
  anti-collapse, warm-up, gradient centralisation, target filtering); the Counter-Hebb
  rules refuse its ELU;
* ``resnet`` (``configs/ch/celeba_resnet18_sym.yaml`` and ``configs/bp/celeba_resnet18.yaml``):
  the two-stream CIFAR-style ``ResNet18`` (``--width``, default 16; per-stream batch-norm,
  ``error_norm: vjp``), shared weights, single decoder, 40 binary tasks (BCE) with a random
  task per image, ``--resnet-size`` (64) square images, Adam 5e-4, batch 100: BP twin
  (``GuidedBackProp``), guided CH.

A rule a network refuses (e.g. DFA through residual blocks) is listed as skipped; a row
whose training step raises a ``RuntimeError`` is listed as failed (with the error), and the
other rows are still measured. On the CPU with ``--threads`` threads (default 1), or
``--accelerator gpu`` (one device), in ``--precision`` (``bf16-mixed`` is meant for the
GPU); ``--compile`` builds every module with ``compile=True`` (``torch.compile`` of the
training objective: compiled in the warm-up, so give it enough ``--warmup`` steps).
Median of ``--repeats`` rounds, each round timing every row once (round robin).
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from step_time import ALGORITHMS, lightning_ms_per_step, make_loader, median_ms_round_robin
from torch import Tensor
from torch.utils.data import DataLoader

from lit_bioplaus.algorithms import BackProp, BioplausModule, CounterCurrent, GuidedBackProp, GuidedCounterHebb
from lit_bioplaus.data import MultiTaskImageDataset
from lit_bioplaus.nn import ConvNet, PooledConvNet, ResNet18

CIFAR_CLASSES = 10
CNN5_CHANNELS = (128, 128, 256, 256, 512)
NUM_TASKS = 40
RECIPES = ("conv32x2", "cnn5", "resnet")


@dataclass(frozen=True)
class Row:
    """One table row: ``build()`` makes the module, ``loader(num_samples)`` its data."""

    rule: str
    network: str
    batch_size: int
    build: Callable[[], BioplausModule]
    loader: Callable[[int], DataLoader]


# --- the recipes ------------------------------------------------------------------------------
def conv32x2_model(rule: str, channels: Sequence[int] = (32, 32), size: int = 32, **options: Any) -> BioplausModule:
    """``rule`` (a key of ``step_time.ALGORITHMS``) on the Counter-Hebb paper's conv net."""
    cls, weight_mode = ALGORITHMS[rule]
    network = partial(
        ConvNet, channels=list(channels), kernel_size=3, stride=2, padding=1, activation="relu", bias=True
    )
    return cls(
        network=partial(network, weight_mode=weight_mode),
        num_classes=CIFAR_CLASSES,
        input_shape=(3, size, size),
        loss="ce",
        optimizer=partial(torch.optim.Adam, lr=1e-4),
        lr_scheduler=partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.95),
        **options,
    )


def cnn5_model(rule: str, channels: Sequence[int] = CNN5_CHANNELS, size: int = 32, **options: Any) -> BioplausModule:
    """``"BP"`` or ``"CCL"`` on the Counter-Current paper's CIFAR CNN."""
    sgd = partial(torch.optim.SGD, lr=1.0, momentum=0.8, weight_decay=1e-6)
    cosine = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=100, eta_min=0.001)
    common = dict(num_classes=CIFAR_CLASSES, input_shape=(3, size, size), optimizer=sgd, lr_scheduler=cosine)
    network = partial(PooledConvNet, channels=list(channels), activation="elu", bias=False)
    if rule == "BP":
        return BackProp(network=partial(network, weight_mode="shared"), gradient_clip_val=0.3, **common, **options)
    if rule == "CCL":
        return CounterCurrent(
            network=partial(network, weight_mode="asymmetric"),
            similarity="cosine",
            similarity_scale=1.0,
            anti_collapse_scale=0.5,
            warmup_steps=100,
            gradient_centralization=True,
            target_filter=0.1,
            gradient_clip_val=0.3,
            feedback_optimizer=sgd,
            feedback_lr_scheduler=cosine,
            feedback_gradient_clip_val=0.3,
            **common,
            **options,
        )
    raise ValueError(f"no {rule} recipe on the CNN: BP or CCL (the Counter-Hebb rules refuse its ELU)")


def resnet_model(rule: str, width: int = 16, size: int = 64, **options: Any) -> BioplausModule:
    """``"BP"`` (``GuidedBackProp``) or ``"CH sym"`` (``GuidedCounterHebb``) on the CelebA
    recipe's guided ResNet-18."""
    cls = {"BP": GuidedBackProp, "CH sym": GuidedCounterHebb}[rule]
    return cls(
        network=partial(ResNet18, width=width, style="cifar", decoder="single", weight_mode="shared"),
        num_tasks=NUM_TASKS,
        num_classes=1,
        loss="bce",
        instruction_width=200,
        input_shape=(3, size, size),
        optimizer=partial(torch.optim.Adam, lr=5e-4),
        lr_scheduler=partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.95),
        **options,
    )


def resnet_loader(batch_size: int, num_samples: int, size: int) -> DataLoader:
    """Random CelebA-shaped batches ``(x (B, 3, size, size), labels (B, 40) 0/1, task (B,))``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_samples, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (num_samples, NUM_TASKS), generator=generator)
    dataset = MultiTaskImageDataset(images, labels, (0.5,) * 3, (0.5,) * 3)

    def with_tasks(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, labels, rows = batch
        return images, labels, rows % NUM_TASKS

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=with_tasks)


def check_compile_option(classes: Sequence[type] = (BioplausModule,)) -> None:
    """Raise ``SystemExit`` with a message unless every class's constructor (through its
    bases) takes ``compile``."""
    for cls in classes:
        if not any("compile" in inspect.signature(c.__init__).parameters for c in cls.__mro__ if "__init__" in vars(c)):
            raise SystemExit(
                f"--compile: {cls.__name__}(...) takes no 'compile' option in this lit_bioplaus; run without --compile"
            )


def rows_of(args: argparse.Namespace) -> list[Row]:
    """The table's rows for the recipes, rules and batch sizes of ``args``."""
    options = {"compile": True} if args.compile else {}
    cifar = (3, 32, 32)
    recipes: dict[str, tuple[str, Sequence[str], Sequence[int], Callable[..., BioplausModule], Callable]] = {
        "conv32x2": (
            f"ConvNet {'-'.join(map(str, args.conv_channels))} s2, CIFAR 32x32",
            ["BP", "CH sym", "CH asym", "FA", "DFA"],
            args.conv_batch_sizes,
            partial(conv32x2_model, channels=args.conv_channels),
            lambda batch, n: make_loader(batch, n, cifar, CIFAR_CLASSES),
        ),
        "cnn5": (
            f"PooledConvNet {'-'.join(map(str, args.cnn5_channels))}, CIFAR 32x32",
            ["BP", "CCL"],
            args.cnn5_batch_sizes,
            partial(cnn5_model, channels=args.cnn5_channels),
            lambda batch, n: make_loader(batch, n, cifar, CIFAR_CLASSES),
        ),
        "resnet": (
            f"guided ResNet18 w{args.width}, {args.resnet_size}x{args.resnet_size}, 40 tasks",
            ["BP", "CH sym"],
            args.resnet_batch_sizes,
            partial(resnet_model, width=args.width, size=args.resnet_size),
            lambda batch, n: resnet_loader(batch, n, args.resnet_size),
        ),
    }
    rows = []
    for recipe in args.recipes:
        network, rules, batch_sizes, model, loader = recipes[recipe]
        for rule in rules:
            if args.rules and rule not in args.rules:
                continue
            name = {"resnet": {"BP": "BP twin", "CH sym": "guided CH"}}.get(recipe, {}).get(rule, rule)
            for batch_size in batch_sizes:
                rows.append(
                    Row(name, network, batch_size, partial(model, rule, **options), partial(loader, batch_size))
                )
    return rows


def ms_per_step(row: Row, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = row.build()
    loader = row.loader(row.batch_size * (args.warmup + args.steps))
    return lightning_ms_per_step(
        model, row.batch_size, args.steps, args.warmup, False, loader, args.accelerator, args.precision
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads); default 1")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--compile", action="store_true", help="build every module with compile=True")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument(
        "--rules",
        nargs="+",
        choices=[*ALGORITHMS, "CCL"],
        help="only these rules (the ResNet's BP twin is BP, its guided CH is CH sym)",
    )
    parser.add_argument("--conv-batch-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--conv-channels", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--cnn5-batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--cnn5-channels", type=int, nargs="+", default=list(CNN5_CHANNELS))
    parser.add_argument("--resnet-batch-sizes", type=int, nargs="+", default=[100])
    parser.add_argument("--width", type=int, default=16, help="ResNet18 width (64: the paper's CelebA net)")
    parser.add_argument("--resnet-size", type=int, default=64)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.compile:
        check_compile_option()
    torch.set_num_threads(args.threads)
    rows, skipped = [], []
    for row in rows_of(args):
        try:
            row.build()  # the constructor refuses a network the rule cannot train
        except ValueError as error:
            skipped.append(f"{row.rule} on {row.network}: {error}")
            continue
        rows.append(row)
    failures: dict[str, str] = {}

    def measure(key: str, row: Row) -> float:
        """The row's ms/step; NaN (and no further tries) once it has failed."""
        if key not in failures:
            try:
                return ms_per_step(row, args)
            except RuntimeError as error:
                failures[key] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        return math.nan

    measures = {str(index): partial(measure, str(index), row) for index, row in enumerate(rows)}
    medians = median_ms_round_robin(measures, args.repeats)
    print(
        f"\nTraining throughput through Lightning, {args.accelerator} {args.precision}"
        f"{', compiled objective' if args.compile else ''}; CPU threads={args.threads}, {args.steps} timed steps "
        f"after {args.warmup} warm-up, median of {args.repeats} rounds, rows timed round robin\n"
    )
    print("| rule | network | batch | images/s | ms/step |")
    print("|:--|:--|--:|--:|--:|")
    for index, row in enumerate(rows):
        ms = medians[str(index)]
        cells = "failed | -" if str(index) in failures else f"{row.batch_size / ms * 1e3:.1f} | {ms:.2f}"
        print(f"| {row.rule} | {row.network} | {row.batch_size} | {cells} |")
    for line in skipped:
        print(f"\nskipped: {line}")
    for index, error in failures.items():
        row = rows[int(index)]
        print(f"\nfailed: {row.rule} on {row.network}, batch {row.batch_size}: {error}")


if __name__ == "__main__":
    main()
