"""The lit-bioplaus CLI: quick start, argument links, clear errors, W&B, CPU DDP."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

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


def test_bad_yaml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: lit_bioplaus.BackProp\n  init_args: [unclosed\n")
    with pytest.raises(SystemExit, match=r"bad\.yaml is not valid YAML"):
        main(["fit", "--config", str(bad)])
    with pytest.raises(SystemExit, match="cannot read config file"):
        main(["fit", "--config", str(tmp_path / "missing.yaml")])


def test_wandb_offline_run_records_metrics(tmp_path, monkeypatch):
    import wandb

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


@pytest.mark.parametrize(("task", "shape"), [([], (359, 2, 10)), (["--model.init_args.predict_task", "1"], (359, 10))])
def test_predict_writes_the_predictions_to_the_run_folder(tmp_path, task, shape):
    """Guided predict answers every task, or the chosen one; nothing is thrown away."""
    from safetensors.torch import load_file

    config = str(ROOT / "configs" / "quickstart_guided.yaml")
    cli = main(["predict", "--config", config, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(tmp_path), *task])  # fmt: skip
    written = load_file(tmp_path / "predictions.safetensors")
    predictions = written["predictions"]
    assert predictions.shape == shape and written["indices"].tolist() == list(range(shape[0]))
    torch.testing.assert_close(predictions.sum(-1), torch.ones(shape[:-1]))
    assert cli.trainer.state.finished


def test_atomic_writes_leave_the_old_file_when_writing_fails(tmp_path):
    from lit_bioplaus.io import atomic_write, atomic_write_text

    path = atomic_write_text(tmp_path / "manifest.json", "good")

    def fail(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_trainer_gradient_clip_becomes_the_modules_clip(tmp_path):
    """``--trainer.gradient_clip_val`` clips the rule's update: one step equals the step
    with ``--model.init_args.gradient_clip_val``, and differs from an unclipped one."""

    def first_step(*clip: str) -> dict[str, torch.Tensor]:
        cli = main(["fit", "--config", QUICKSTART, *FAST, "--trainer.max_steps", "1", "--trainer.limit_val_batches",
                    "0", "--test_after_fit", "false", "--trainer.default_root_dir", str(tmp_path), *clip])  # fmt: skip
        assert cli.trainer.gradient_clip_val is None
        return {k: v.clone() for k, v in cli.model.state_dict().items()}

    by_trainer = first_step("--trainer.gradient_clip_val", "0.01")
    by_model = first_step("--model.init_args.gradient_clip_val", "0.01")
    unclipped = first_step()  # as with Lightning's 0: no clipping
    assert all(torch.equal(by_trainer[k], by_model[k]) for k in by_model)
    assert all(torch.equal(first_step("--trainer.gradient_clip_val", "0")[k], unclipped[k]) for k in unclipped)
    assert not all(torch.equal(by_trainer[k], unclipped[k]) for k in unclipped)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--trainer.accumulate_grad_batches", "2"], "accumulate_grad_batches is not supported"),
        (["--trainer.gradient_clip_val", "1", "--model.init_args.gradient_clip_val", "2"], "disagree"),
        (["--trainer.gradient_clip_val", "1", "--trainer.gradient_clip_algorithm", "value"], "global norm"),
    ],
)
def test_trainer_flags_of_automatic_optimization_fail_in_one_line(flags, message):
    with pytest.raises(SystemExit, match=message) as exit_info:
        main(["fit", "--config", QUICKSTART, *FAST, *flags])
    assert "\n" not in str(exit_info.value)


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    import os
    import stat

    from lit_bioplaus.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "manifest.json", "{}")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
