"""Training throughput of instructed Counter-Hebb learning and its BP twin on the two-stream
ResNet-18 of the CelebA recipe (ALGORITHMS.md 4.3).

Images per second through Lightning: CIFAR-style ResNet-18 with per-stream batch-norm
(``error_norm: vjp``), shared weights, single decoder, 40 binary tasks (BCE), random
``64x64`` images with random attributes and tasks, Adam; median of ``--repeats`` rounds,
every round timing each column once (round robin). On the CPU with ``--threads`` threads
(default 1); ``--accelerator gpu --precision bf16-mixed`` on a GPU.

    python benchmarks/resnet_throughput.py --threads 1
    python benchmarks/resnet_throughput.py --accelerator gpu --precision bf16-mixed --steps 50
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from step_time import lightning_ms_per_step, median_ms_round_robin
from torch import Tensor
from torch.utils.data import DataLoader

from lit_bioplaus import GuidedBackProp, GuidedCounterHebb
from lit_bioplaus.data import MultiTaskImageDataset
from lit_bioplaus.nn import ResNet18

NUM_TASKS = 40


def make_loader(batch_size: int, num_samples: int, size: int) -> DataLoader:
    """Random CelebA-shaped batches ``(x (B, 3, size, size), labels (B, 40) 0/1, task (B,))``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_samples, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (num_samples, NUM_TASKS), generator=generator)
    dataset = MultiTaskImageDataset(images, labels, (0.5,) * 3, (0.5,) * 3)

    def with_tasks(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, labels, rows = batch
        return images, labels, rows % NUM_TASKS

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=with_tasks)


def images_per_second(cls: type, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    model = cls(
        network=partial(ResNet18, width=args.width),
        num_tasks=NUM_TASKS,
        num_classes=1,
        loss="bce",
        instruction_width=200,
        input_shape=(3, args.size, args.size),
        optimizer=partial(torch.optim.Adam, lr=5e-4),
    )
    loader = make_loader(args.batch_size, args.batch_size * (args.warmup + args.steps), args.size)
    ms = lightning_ms_per_step(
        model, args.batch_size, args.steps, args.warmup, False, loader, args.accelerator, args.precision
    )
    return args.batch_size / ms * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rules = {"BP twin": GuidedBackProp, "guided CH": GuidedCounterHebb}
    measures = {name: partial(images_per_second, cls, args) for name, cls in rules.items()}
    rates = median_ms_round_robin(measures, args.repeats)  # a median of any measure
    print(
        f"Guided ResNet-18 (width {args.width}, per-stream BN, vjp), {args.size}x{args.size}, batch {args.batch_size}, "
        f"40 tasks, Adam, {args.accelerator} {args.precision}, CPU threads={args.threads}, {args.steps} timed steps, "
        f"median of {args.repeats} rounds (round robin)\n"
    )
    print("| rule | images/s | x BP |")
    print("|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / rates['BP twin']:.2f} |")


if __name__ == "__main__":
    main()
