"""Mixed precision: a bf16-mixed Counter-Hebb run trains like the float32 run, on an MLP and
on a strided conv net (whose first layer's update pairs the float32 image with a bf16 error)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lit_bioplaus.cli import main

QUICKSTART_CH = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart_ch.yaml")


NETWORKS = {
    "mlp": [],
    "conv": ["--model.init_args.network", "lit_bioplaus.nn.ConvNet", "--model.init_args.network.channels", "[16, 16]"],
}


def one_epoch(precision: str, tmp_path: Path, network: list[str]) -> dict[str, float]:
    cli = main([
        "fit", "--config", QUICKSTART_CH, "--trainer.max_epochs", "1",
        "--trainer.precision", precision, "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / precision),
        "--test_after_fit", "false", *network,
    ])  # fmt: skip
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    (tested,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return metrics | tested


@pytest.mark.parametrize("network", NETWORKS)
def test_bf16_mixed_counter_hebb_matches_float32(network, tmp_path):
    full = one_epoch("32-true", tmp_path, NETWORKS[network])
    mixed = one_epoch("bf16-mixed", tmp_path, NETWORKS[network])
    assert all(math.isfinite(mixed[name]) for name in ("train/loss_epoch", "val/loss", "test/loss"))
    assert mixed["test/acc"] > 0.5
    assert abs(mixed["test/acc"] - full["test/acc"]) <= 0.01
