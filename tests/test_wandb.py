"""W&B done right: an online logger without an API key stops in one line before any run
exists, and every run keeps its own full config (in W&B's run config and as a file)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lit_bioplaus.cli import main
from lit_bioplaus.tracking import check_wandb_ready

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SHORT_FIT = ["fit", "--config", QUICKSTART, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
             "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--test_after_fit", "false"]  # fmt: skip
NO_API_KEY = (
    "error: W&B logging is online but no API key was found: run `wandb login`, set WANDB_API_KEY, "
    "or set WANDB_MODE=offline to keep the run on disk"
)
API_KEY = "0123456789abcdef0123456789abcdef01234567"  # a well-formed, made-up key


@pytest.fixture
def wandb(tmp_path, monkeypatch):
    """wandb for a user who never ran ``wandb login``: empty home, netrc and settings,
    WANDB_* unset, and wandb's once-per-process settings reread."""
    import wandb

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.setenv(name, "")  # recorded, so that what WandbLogger sets (WANDB_MODE) is undone too
        monkeypatch.delenv(name)
    wandb.teardown()
    yield wandb
    wandb.finish()
    wandb.teardown()


def test_online_wandb_without_api_key_exits_in_one_line_before_the_run(wandb, tmp_path):
    logger = WandbLogger(save_dir=tmp_path)
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        check_wandb_ready([CSVLogger(tmp_path), logger])
    assert time.perf_counter() - start < 5
    assert str(exit_info.value) == NO_API_KEY
    assert logger._experiment is None and wandb.run is None  # no W&B run was created


def test_malformed_api_key_exits_in_one_line(wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "not a key")
    with pytest.raises(SystemExit, match=r"^error: W&B credentials are not usable: WANDB_API_KEY invalid"):
        check_wandb_ready(WandbLogger(save_dir=tmp_path))


def set_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)


def write_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``wandb login`` stores."""
    (tmp_path / "home" / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {API_KEY}\n")


def set_offline_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")


def write_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``wandb offline`` stores: a settings file of the workspace (the working folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text("[default]\nmode = offline\n")


def wandb_logger(**kwargs: Any) -> Callable[[Path], WandbLogger]:
    """A ``WandbLogger`` with these arguments, once the test's folder is known."""
    return lambda path: WandbLogger(save_dir=path, **kwargs)


@pytest.mark.parametrize(
    ("logger", "prepare"),
    [
        pytest.param(wandb_logger(), set_api_key, id="env-key"),
        pytest.param(wandb_logger(), write_netrc, id="netrc-key"),
        pytest.param(wandb_logger(offline=True), None, id="offline-flag"),
        pytest.param(wandb_logger(mode="disabled"), None, id="mode-argument"),
        pytest.param(wandb_logger(), set_offline_mode, id="env-offline"),
        pytest.param(wandb_logger(), write_wandb_offline, id="wandb-offline"),
        pytest.param(lambda path: [CSVLogger(path)], None, id="no-wandb"),
        pytest.param(lambda path: None, None, id="no-logger"),
    ],
)
def test_wandb_with_credentials_or_offline_passes(wandb, tmp_path, monkeypatch, logger, prepare):
    if prepare is not None:
        prepare(tmp_path, monkeypatch)
    logger = logger(tmp_path)
    start = time.perf_counter()
    check_wandb_ready(logger)
    assert time.perf_counter() - start < 5
    assert wandb.run is None


def test_cli_online_wandb_without_api_key_exits_in_one_line(wandb, tmp_path):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
              "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert time.perf_counter() - start < 5
    assert str(exit_info.value) == NO_API_KEY
    assert wandb.run is None and not list((tmp_path / "wandb").glob("*run-*"))


def fit_offline(wandb, tmp_path: Path, *args: str) -> Path:
    """One short offline W&B run of the quick start; its run folder."""
    before = set((tmp_path / "wandb").glob("offline-run-*"))
    main([*SHORT_FIT, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.offline", "true",
          "--trainer.logger.init_args.project", "lit-bioplaus-tests",
          "--trainer.default_root_dir", str(tmp_path), *args])  # fmt: skip
    wandb.finish()
    (run,) = set((tmp_path / "wandb").glob("offline-run-*")) - before
    return run


def synced_config(run: Path) -> dict:
    """The ``run.config`` an offline run will sync: the config records of its transaction
    log (LevelDB log format: 32 KiB blocks of chunks, each with a 7-byte header)."""
    from wandb.proto.wandb_internal_pb2 import Record

    (log,) = run.glob("run-*.wandb")
    data, block = log.read_bytes(), 32768
    config, position, pending = {}, 7, b""  # after the file header
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's zero-padded tail
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a record's full or last chunk
            record = Record.FromString(pending)
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            pending = b""
    return config


def test_offline_wandb_runs_keep_their_own_full_config(wandb, tmp_path):
    first = fit_offline(wandb, tmp_path)
    second = fit_offline(wandb, tmp_path, "--seed_everything", "7", "--model.init_args.optimizer.init_args.lr", "0.01")
    for run, seed, lr in ((first, 0, 0.002), (second, 7, 0.01)):
        run_config = synced_config(run)
        assert run_config["seed_everything"] == seed
        assert run_config["trainer"]["max_epochs"] == 1
        assert run_config["trainer"]["limit_train_batches"] == 2
        assert run_config["model"]["class_path"] == "lit_bioplaus.BackProp"
        assert run_config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == lr
        assert run_config["data"]["class_path"] == "lit_bioplaus.data.Digits"
        cli_config = yaml.safe_load((run / "files" / "cli_config.yaml").read_text())  # for --config, uploaded
        assert cli_config == {key: run_config[key] for key in cli_config}
        assert cli_config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
        assert cli_config["model"]["init_args"]["network"]["class_path"] == "lit_bioplaus.nn.MLP"
        assert cli_config["data"]["init_args"]["batch_size"] == 32
    assert not (tmp_path / "config.yaml").exists()  # no shared file for the next run to overwrite


def test_csv_runs_keep_their_config_in_their_versioned_folder(tmp_path):
    for seed in (0, 7):
        main([*SHORT_FIT, "--seed_everything", str(seed), "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    for version, seed in enumerate((0, 7)):
        folder = tmp_path / "quickstart" / f"version_{version}"
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed_everything"] == seed
        hparams = yaml.full_load((folder / "hparams.yaml").read_text())  # Lightning writes tuples
        assert hparams["seed_everything"] == seed and hparams["trainer"]["max_epochs"] == 1
        assert hparams["model"]["class_path"] == "lit_bioplaus.BackProp"
