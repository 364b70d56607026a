"""Every shipped config trains (fast_dev_run) on tiny data in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_bioplaus.cli import main
from tests.fake_data import write_all

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


SMALL_IMAGES = {"celeba": ["--data.init_args.image_size", "[32, 32]"]}
"""Per data set, overrides that keep a fast_dev_run fast: the CelebA recipes' ResNet-18 at
218x178 costs 43 GFLOP per image and the test step runs every image under 40 tasks (the fake
JPEGs are 218x178, so the resize and the cache are exercised)."""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


def test_configs_are_found():
    assert "configs/quickstart.yaml" in CONFIGS
    assert "configs/bp/mlp500_fashion_mnist.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fits(config, data_root, tmp_path):
    cli = main(
        [
            "fit",
            "--config",
            str(ROOT / config),
            "--trainer.fast_dev_run",
            "true",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--data.init_args.data_dir",
            str(data_root),
            "--data.init_args.batch_size",
            "4",
            *SMALL_IMAGES.get(Path(config).stem.split("_")[0], []),
        ]
    )
    assert cli.trainer.state.finished
    assert f"test/{cli.model.metric_name}" in cli.trainer.callback_metrics
