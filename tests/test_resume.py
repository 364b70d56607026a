"""Resuming from a mid-epoch checkpoint ends exactly where the uninterrupted run ends:
parameters, buffers (batch-norm running statistics of both streams and their
``num_batches_tracked``, the guided instruction head), every optimizer's state and every
scheduler's state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_bioplaus.cli import main
from lit_bioplaus.nn import TwoStreamBatchNorm

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def schedule(prefix: str) -> list[str]:
    """Overrides giving the optimizer under ``prefix`` an exponential LR schedule."""
    return [f"--{prefix}lr_scheduler", "torch.optim.lr_scheduler.ExponentialLR", f"--{prefix}lr_scheduler.gamma", "0.5"]


def momentum(prefix: str) -> list[str]:
    """Overrides giving the SGD optimizer under ``prefix`` momentum (state to restore)."""
    return [f"--{prefix}optimizer.momentum", "0.9"]


# Digits at batch 32 (64 for CCL) has 41 (21) batches per epoch; CCL makes one optimizer
# step (global step) per batch, two with an optimizer per network. Every run crosses an
# epoch boundary after the checkpoint.
FORWARD, FEEDBACK = "model.init_args.", "model.init_args.feedback_"
BATCH_NORM = ["--model.init_args.network.init_args.batch_norm", "true"]  # BU and TD norms, running statistics
CCL = [*schedule(FORWARD), *schedule(FEEDBACK), *momentum(FORWARD), *momentum(FEEDBACK)]
CASES = {  # case: (config, total steps, checkpoint step, overrides)
    "quickstart": ("quickstart.yaml", 60, 26, schedule(FORWARD)),
    "quickstart_ch": ("quickstart_ch.yaml", 60, 26, schedule(FORWARD)),
    "quickstart_ccl": ("quickstart_ccl.yaml", 30, 13, CCL),
    "quickstart_ccl_two_optimizers": ("quickstart_ccl.yaml", 60, 26, [*CCL, f"--{FORWARD}merge_optimizers", "false"]),
    # Multi-Digits at batch 64: 23 batches per epoch
    "quickstart_guided": ("quickstart_guided.yaml", 30, 11, schedule(FORWARD)),
    "quickstart_guided_batch_norm": ("quickstart_guided.yaml", 30, 11, [*schedule(FORWARD), *BATCH_NORM]),
}


def fit(case: str, directory: Path, max_steps: int, *extra: str):
    """Run ``fit`` of ``case`` for ``max_steps`` steps: its final parameters, its final
    buffers and the CLI."""
    config, _, _, overrides = CASES[case]
    cli = main([
        "fit", "--config", str(CONFIGS / config), "--trainer.max_steps", str(max_steps),
        "--trainer.max_epochs", "-1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--trainer.default_root_dir", str(directory),
        *overrides,
        *extra,
    ])  # fmt: skip
    parameters = {name: p.detach().clone() for name, p in cli.model.named_parameters()}
    return parameters, {name: b.detach().clone() for name, b in cli.model.named_buffers()}, cli


def states(cli) -> tuple[list[dict], list[dict]]:
    """State dicts of the run's optimizers and LR schedulers."""
    optimizers = [optimizer.state_dict() for optimizer in cli.trainer.optimizers]
    schedulers = [config.scheduler.state_dict() for config in cli.trainer.lr_scheduler_configs]
    return optimizers, schedulers


@pytest.mark.parametrize("case", CASES)
def test_resume_from_mid_epoch_checkpoint(case, tmp_path):
    _, total_steps, checkpoint_step, _ = CASES[case]
    reference, reference_buffers, straight = fit(case, tmp_path / "straight", total_steps)
    fit(
        case, tmp_path / "first", checkpoint_step,
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        f"--trainer.callbacks.every_n_train_steps={checkpoint_step}",
        "--trainer.callbacks.filename=mid",
    )  # fmt: skip
    checkpoint = tmp_path / "ckpt" / "mid.ckpt"
    state = torch.load(checkpoint, weights_only=False)
    assert state["global_step"] == checkpoint_step and state["epoch"] == 0  # mid-epoch
    resumed, resumed_buffers, cli = fit(case, tmp_path / "second", total_steps, "--ckpt_path", str(checkpoint))
    assert cli.trainer.global_step == total_steps
    assert cli.trainer.current_epoch >= 1
    (optimizers, schedulers), (expected_optimizers, expected_schedulers) = states(cli), states(straight)
    assert len(schedulers) == len(expected_schedulers) == len(optimizers) >= 1
    assert schedulers == expected_schedulers
    for optimizer, expected in zip(optimizers, expected_optimizers, strict=True):
        assert optimizer["state"].keys() == expected["state"].keys() and optimizer["state"]
        for key, value in expected["state"].items():
            torch.testing.assert_close(optimizer["state"][key], value, rtol=0, atol=1e-6)
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    assert resumed_buffers.keys() == reference_buffers.keys()
    for name, value in reference_buffers.items():
        torch.testing.assert_close(resumed_buffers[name], value, rtol=0, atol=1e-6, msg=name)
    tracked = [value for name, value in reference_buffers.items() if name.endswith("num_batches_tracked")]
    if "batch_norm" in case:  # both streams' norms updated their statistics at every step
        streams = {m.stream for m in cli.model.network.modules() if isinstance(m, TwoStreamBatchNorm)}
        assert streams == {"up", "down"} and tracked and all(int(value) == total_steps for value in tracked)
