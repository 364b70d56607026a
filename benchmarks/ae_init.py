"""What the Counter-Current autoencoder needs: the official recipe's initialisation.

    python benchmarks/ae_init.py [--steps 1000] [--threads 1]

Trains the small convolutional autoencoder of ``configs/ccl/ae_fashion_mnist.yaml``
(Fashion-MNIST zero-padded to 32x32, four stride-2 convolutions 32-64-128-256 and their
mirrors, batch-norm, ReLU, batch 32, SGD lr 0.01 momentum 0.9 for both networks) for
``--steps`` batches with and without each of the two ingredients of the official STL-10
recipe -- upsampling maps initialised at 1e-3 scale (``upsample_init_scale``) and a
gradient-norm clip of 0.2 per network -- and prints the validation reconstruction MSE
(normalised pixels; 6,000 held-out training images), next to backprop on the same network.
Weight decay, gradient centralisation, warm-up and the cosine schedule of the shipped config
are left out: the table isolates the two settings that decide whether CCL learns.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import lightning.pytorch as pl
import torch

from lit_bioplaus.algorithms import BackProp, BioplausModule, CounterCurrent
from lit_bioplaus.data import FashionMNIST, VisionDataModule
from lit_bioplaus.nn import ConvAutoencoder

CHANNELS = (32, 64, 128, 256)
VARIANTS: dict[str, tuple[type[BioplausModule], float, float | None]] = {
    # name: (rule, upsample_init_scale, gradient-norm clip per network)
    "CCL, default init": (CounterCurrent, 1.0, None),
    "CCL, default init, clip 0.2": (CounterCurrent, 1.0, 0.2),
    "CCL, upsample_init_scale 1e-3": (CounterCurrent, 1e-3, None),
    "CCL, upsample_init_scale 1e-3, clip 0.2 (recipe)": (CounterCurrent, 1e-3, 0.2),
    "BP, upsample_init_scale 1e-3, clip 0.2": (BackProp, 1e-3, 0.2),
}

# The table is the output: keep Lightning's per-fit notices and warnings out of it.
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")


def make_model(
    rule: type[BioplausModule],
    input_shape: tuple[int, ...],
    upsample_init_scale: float,
    clip: float | None,
    channels: tuple[int, ...] = CHANNELS,
) -> BioplausModule:
    """The autoencoder under ``rule`` with SGD lr 0.01 momentum 0.9 (both networks for CCL)."""
    optimizer = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9)  # noqa: E731
    options = {"feedback_optimizer": optimizer, "feedback_gradient_clip_val": clip} if rule is CounterCurrent else {}
    return rule(
        network=lambda shape, classes: ConvAutoencoder(
            shape, channels=channels, activation="relu", upsample_init_scale=upsample_init_scale
        ),
        task="autoencoder",
        input_shape=input_shape,
        optimizer=optimizer,
        gradient_clip_val=clip,
        **options,
    )


def validation_mse(model: BioplausModule, datamodule: VisionDataModule, steps: int) -> tuple[float, float]:
    """``(untrained, trained)`` validation MSE around ``steps`` training batches."""
    quiet = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(  # counted in batches, whatever the optimizer steps per batch (CCL: one or two)
        max_epochs=1, limit_train_batches=steps, limit_val_batches=0, enable_checkpointing=False, **quiet
    )
    evaluator = pl.Trainer(**quiet)
    before = evaluator.validate(model, datamodule=datamodule, verbose=False)[0]["val/mse"]
    trainer.fit(model, datamodule=datamodule)
    after = evaluator.validate(model, datamodule=datamodule, verbose=False)[0]["val/mse"]
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="training batches per variant (at most one epoch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datamodule = FashionMNIST(batch_size=32, eval_batch_size=500, val_fraction=0.1, pad=2)
    print(f"| variant ({args.steps} batches, seed {args.seed}) | untrained val MSE | val MSE | x lower | seconds |")
    print("|---|---|---|---|---|")
    for name, (rule, scale, clip) in VARIANTS.items():
        pl.seed_everything(args.seed, verbose=False)
        model = make_model(rule, datamodule.input_shape, scale, clip)
        start = time.perf_counter()
        before, after = validation_mse(model, datamodule, args.steps)
        seconds = time.perf_counter() - start
        print(f"| {name} | {before:.4f} | {after:.4f} | {before / after:.1f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
