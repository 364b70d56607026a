"""Step time of instructed Counter-Hebb learning versus its BP twin on the Multi-MNIST network.

Milliseconds per training step through Lightning (Adam, single decoder, shared weights,
random 28x28 images with random labels and tasks), median of ``--repeats`` rounds, every
round timing each column once (round robin), one CPU thread by default. The last column
runs pass 1 on the batch's ``N`` instruction one-hots, as the official code does, instead
of once on ``eye(T)``.

    python benchmarks/guided_step_time.py --threads 1
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from step_time import lightning_ms_per_step, median_ms_round_robin
from torch import Tensor
from torch.utils.data import DataLoader

from lit_bioplaus import GuidedBackProp, GuidedCounterHebb
from lit_bioplaus.algorithms.counter_hebb import Gates
from lit_bioplaus.data import MultiTaskImageDataset
from lit_bioplaus.nn import MultiMNISTNet

NUM_TASKS, NUM_CLASSES = 2, 10


class PassOneOnEveryRow(GuidedCounterHebb):
    """Guided Counter-Hebb with pass 1 run on the ``N`` samples' instructions."""

    def sample_gates(self, task: Tensor) -> Gates:
        return self.instruction_pass(torch.nn.functional.one_hot(task, self.num_tasks))


def make_loader(batch_size: int, num_samples: int) -> DataLoader:
    """Random Multi-MNIST-shaped batches ``(x, labels (B, 2), task (B,))``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_samples, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (num_samples, NUM_TASKS), generator=generator)
    dataset = MultiTaskImageDataset(images, labels, (0.5,), (0.25,))

    def with_tasks(batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, labels, rows = batch
        return images, labels, rows % NUM_TASKS

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=with_tasks)


def ms_per_step(cls: type, channels: int, batch_size: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = cls(
        network=partial(MultiMNISTNet, channels=channels),
        num_tasks=NUM_TASKS,
        num_classes=NUM_CLASSES,
        input_shape=(1, 28, 28),
        optimizer=partial(torch.optim.Adam, lr=5e-4),
    )
    loader = make_loader(batch_size, batch_size * (warmup + steps))
    return lightning_ms_per_step(model, batch_size, steps, warmup, progress_bar=False, loader=loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 100])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rules = {"BP twin": GuidedBackProp, "guided CH": GuidedCounterHebb, "CH, pass 1 on N rows": PassOneOnEveryRow}
    print(f"MultiMNISTNet, batch {args.batch_size}, Adam, CPU threads={args.threads}, {args.steps} timed steps, "
          f"median of {args.repeats} rounds (round robin)\n")  # fmt: skip
    print("| channels | " + " | ".join(f"{name} ms (x BP)" for name in rules) + " |")
    print("|---:|" + "---:|" * len(rules))
    for channels in args.channels:
        measures = {
            name: partial(ms_per_step, cls, channels, args.batch_size, args.steps, args.warmup)
            for name, cls in rules.items()
        }
        medians = median_ms_round_robin(measures, args.repeats)
        bp = medians["BP twin"]
        print(f"| {channels} | " + " | ".join(f"{ms:.2f} ({ms / bp:.2f})" for ms in medians.values()) + " |")


if __name__ == "__main__":
    main()
