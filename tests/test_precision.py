"""Mixed precision: a bf16-mixed Counter-Hebb run trains like the float32 run."""

from __future__ import annotations

import math
from pathlib import Path

from lit_bioplaus.cli import main

QUICKSTART_CH = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart_ch.yaml")


def one_epoch(precision: str, tmp_path: Path) -> dict[str, float]:
    cli = main([
        "fit", "--config", QUICKSTART_CH, "--trainer.max_epochs", "1",
        "--trainer.precision", precision, "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / precision),
        "--test_after_fit", "false",
    ])  # fmt: skip
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return metrics | tested


def test_bf16_mixed_counter_hebb_matches_float32(tmp_path):
    full = one_epoch("32-true", tmp_path)
    mixed = one_epoch("bf16-mixed", tmp_path)
    assert all(math.isfinite(mixed[name]) for name in ("train/loss_epoch", "val/loss", "test/loss"))
    assert mixed["test/acc"] > 0.5
    assert abs(mixed["test/acc"] - full["test/acc"]) <= 0.01
