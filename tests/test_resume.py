"""Resuming from a mid-epoch checkpoint ends exactly where the uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_bioplaus.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOTAL_STEPS, CHECKPOINT_STEP = 60, 25  # Digits, batch 32: 41 batches per epoch


def fit(config: str, directory: Path, max_steps: int, *extra: str) -> dict[str, torch.Tensor]:
    cli = main([
        "fit", "--config", str(CONFIGS / config), "--trainer.max_steps", str(max_steps),
        "--trainer.max_epochs", "-1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--trainer.default_root_dir", str(directory),
        "--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.ExponentialLR",
        "--model.init_args.lr_scheduler.gamma", "0.5",
        *extra,
    ])  # fmt: skip
    return {name: p.detach().clone() for name, p in cli.model.named_parameters()}, cli


@pytest.mark.parametrize("config", ["quickstart.yaml", "quickstart_ch.yaml"])
def test_resume_from_mid_epoch_checkpoint(config, tmp_path):
    reference, straight = fit(config, tmp_path / "straight", TOTAL_STEPS)
    fit(
        config, tmp_path / "first", CHECKPOINT_STEP,
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}",
        f"--trainer.callbacks.every_n_train_steps={CHECKPOINT_STEP}",
        "--trainer.callbacks.filename=mid",
    )  # fmt: skip
    checkpoint = tmp_path / "ckpt" / "mid.ckpt"
    state = torch.load(checkpoint, weights_only=False)
    assert state["global_step"] == CHECKPOINT_STEP and state["epoch"] == 0  # mid-epoch
    resumed, cli = fit(config, tmp_path / "second", TOTAL_STEPS, "--ckpt_path", str(checkpoint))
    assert cli.trainer.global_step == TOTAL_STEPS
    assert cli.model.lr_schedulers().state_dict() == straight.model.lr_schedulers().state_dict()
    assert cli.model.optimizers().optimizer.state_dict()["state"].keys()
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
