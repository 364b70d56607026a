"""The lit-bioplaus CLI: quick start, argument links, clear errors, W&B, CPU DDP."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_bioplaus.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FAST = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def test_links_shapes_from_the_datamodule():
    cli = main(["--config", QUICKSTART, *FAST], run=False)
    assert cli.model.num_classes == 10
    assert cli.model.input_shape == (1, 8, 8)
    assert cli.model.network(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_fit_then_test_prints_metrics(tmp_path, capsys):
    cli = main(
        [
            "fit",
            "--config",
            QUICKSTART,
            *FAST,
            "--trainer.max_epochs",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    assert "test/acc" in capsys.readouterr().out
    assert cli.trainer.callback_metrics["test/acc"] > 0.5


def test_unknown_datamodule_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--data", "ImageNet22k"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "ImageNet22k" in err
    assert "Traceback" not in err


def test_bad_yaml_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: lit_bioplaus.BackProp\n  init_args: [unclosed\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad)])
    assert exit_info.value.code != 0
    assert "bad.yaml" in capsys.readouterr().err


def test_wandb_offline_run_records_metrics(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    main(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger",
            "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.project",
            "lit-bioplaus-tests",
            "--trainer.logger.name",
            "offline-check",
            "--trainer.logger.save_dir",
            str(tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
        ]
    )
    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    record = runs[0].read_bytes()
    for key in ("train/loss_epoch", "val/acc", "test/acc"):
        values = logged_values(record, key)
        assert values and all(math.isfinite(v) for v in values), key
    assert 0.5 < logged_values(record, "test/acc")[-1] <= 1.0
    assert b"lit_bioplaus.nn.MLP" in record  # the run's config is recorded too


def logged_values(record: bytes, key: str) -> list[float]:
    """Values logged under ``key`` in a W&B transaction log (protobuf items hold
    the key, then the value as a JSON string)."""
    pattern = re.escape(key.encode()) + rb"\x82\x01.([-+0-9.eE]+)"
    return [float(match) for match in re.findall(pattern, record, flags=re.DOTALL)]


def test_cpu_ddp_two_processes_keep_identical_parameters(tmp_path):
    """Two gloo ranks must end with the same parameters (DDP all-reduces gradients)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_bioplaus",
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--test_after_fit",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.callbacks+=rank_snapshot.SaveRankParameters",
            f"--trainer.callbacks.directory={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    initial = load_file(tmp_path / "rank0_initial.safetensors")
    assert any(not torch.equal(initial[n], rank0[n]) for n in rank0), "parameters never changed"
