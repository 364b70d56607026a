"""Training cost of Counter-Current learning versus backprop on the paper's MLPs.

    python benchmarks/flops.py [--batch-size 32] [--time-batch-size 256] [--steps 300]

Table 1: MFLOPs per sample per training step at ``--batch-size`` (the paper uses 32),
counted by ``torch.utils.flop_counter.FlopCounterMode`` over one step's forward pass,
local / global losses and backward pass (the optimizer update is elementwise and not
counted, as in the paper). Matrix products count ``2 * M * N * K``.

* BP: forward, then the gradients of every weight and of every hidden activity (not of
  the input): about ``3x`` the forward cost minus the first layer's input gradient.
* CCL: forward with detached layer inputs (weight gradients only), plus the feedback
  network run on the ``C`` class one-hots (shared by the batch, so its cost per sample
  shrinks with the batch), plus the ``N x C`` similarity products at every layer input.

Table 2: milliseconds per training step (batch) through Lightning at
``--time-batch-size`` for the same models (SGD, as in the recipes), median of
``--repeats``.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from step_time import lightning_ms_per_step, median_ms_round_robin
from torch.utils.flop_counter import FlopCounterMode

from lit_bioplaus.algorithms import BackProp, BioplausModule, CounterCurrent
from lit_bioplaus.nn import MLP

NETWORKS: dict[str, tuple[tuple[int, int, int], list[int], float, float]] = {
    # name: (input shape, hidden widths, paper MFLOPs BP, paper MFLOPs CCL)
    "MNIST MLP 784-256x5-10": ((1, 28, 28), [256] * 5, 2.39, 2.55),
    "CIFAR MLP 3072-1024x3-10": ((3, 32, 32), [1024] * 3, 25.23, 27.89),
}
NUM_CLASSES = 10


def make_model(algorithm: str, input_shape: tuple[int, int, int], hidden: list[int]) -> BioplausModule:
    """BP or CCL on the recipe's MLP (ELU, no biases), SGD lr 1 per network."""
    cls, weight_mode = (BackProp, "shared") if algorithm == "BP" else (CounterCurrent, "asymmetric")
    return cls(
        network=lambda shape, classes: MLP(
            shape, classes, hidden=hidden, activation="elu", bias=False, weight_mode=weight_mode
        ),
        input_shape=input_shape,
        num_classes=NUM_CLASSES,
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
    )


def mflops_per_sample(model: BioplausModule, batch_size: int) -> float:
    """MFLOPs of one training step's objective and backward pass, per sample."""
    x = torch.randn(batch_size, *model.input_shape)
    target = torch.randint(0, NUM_CLASSES, (batch_size,))
    counter = FlopCounterMode(display=False)
    with counter:
        objective, _, _ = model.training_objective(x, target)
        objective.backward()
    return counter.get_total_flops() / batch_size / 1e6


def _lightning_ms(
    algorithm: str, input_shape: tuple[int, int, int], hidden: list[int], batch_size: int, steps: int, warmup: int
) -> float:
    return lightning_ms_per_step(make_model(algorithm, input_shape, hidden), batch_size, steps, warmup, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--time-batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"\nMFLOPs per sample per training step, batch {args.batch_size} (paper's in brackets)")
    print("\n| network | BP | CCL | CCL / BP |")
    print("|:--|--:|--:|--:|")
    for name, (shape, hidden, paper_bp, paper_ccl) in NETWORKS.items():
        bp = mflops_per_sample(make_model("BP", shape, hidden), args.batch_size)
        ccl = mflops_per_sample(make_model("CCL", shape, hidden), args.batch_size)
        print(f"| {name} | {bp:.2f} ({paper_bp}) | {ccl:.2f} ({paper_ccl}) | {ccl / bp:.2f} |")

    print(f"\nms per training step through Lightning, batch {args.time_batch_size}, CPU threads={args.threads}")
    print(f"({args.steps} timed steps, median of {args.repeats})")
    print("\n| network | BP ms | CCL ms | CCL / BP |")
    print("|:--|--:|--:|--:|")
    for name, (shape, hidden, _, _) in NETWORKS.items():
        measures = {
            algorithm: partial(_lightning_ms, algorithm, shape, hidden, args.time_batch_size, args.steps, args.warmup)
            for algorithm in ("BP", "CCL")
        }
        ms = median_ms_round_robin(measures, args.repeats)
        print(f"| {name} | {ms['BP']:.3f} | {ms['CCL']:.3f} | {ms['CCL'] / ms['BP']:.2f} |")


if __name__ == "__main__":
    main()
