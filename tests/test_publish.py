"""Publishing to the zoo is a transaction: every refusal and every failed write leaves the
zoo byte-identical and loadable (``lit_bioplaus.publish``)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lit_bioplaus import registry, zoo
from lit_bioplaus.cli import main
from lit_bioplaus.data import Digits
from lit_bioplaus.publish import PublishError, _main, publish, publish_from_checkpoint

CONFIGS = registry.PROJECT_ROOT / "configs"
ENTRY = "bp_mlp128_digits"


@pytest.fixture
def tmp_zoo(tmp_path, monkeypatch):
    """A copy of the zoo the test may publish to."""
    shutil.copytree(zoo.zoo_dir(), tmp_path / "zoo")
    monkeypatch.setenv("LIT_BIOPLAUS_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of two training steps of the BackProp and Counter-Hebb quick starts."""
    folder = tmp_path_factory.mktemp("runs")
    paths = {}
    for rule, config in (("bp", "quickstart.yaml"), ("ch", "quickstart_ch.yaml")):
        main(["fit", "--config", str(CONFIGS / config), "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
              "--trainer.default_root_dir", str(folder / rule), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"])  # fmt: skip
        paths[rule] = folder / rule / "checkpoints" / "best.ckpt"
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path: bytes)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_all_entries_load() -> None:
    for name in registry.list_models():
        registry.load_state_dict(name)  # verifies the sha256


def publish_copy(name: str, model: torch.nn.Module | None = None, **kwargs) -> zoo.Weights:
    """Publish ``model`` (default: ``ENTRY``'s) as ``name`` with ``ENTRY``'s metadata."""
    entry = zoo.get_weights(ENTRY)
    model = model if model is not None else zoo.load_pretrained(ENTRY)
    return publish(name, model, entry.model, entry.recipe, Digits(), {"test/acc": 0.5}, **kwargs)


def retrained() -> torch.nn.Module:
    """``ENTRY``'s module with other weights than the published ones."""
    model = zoo.load_pretrained(ENTRY)
    with torch.no_grad():
        model.network[1].weight.add_(1.0)
    return model


def fail_halfway(write: Callable) -> Callable:
    """``write`` (``Path.write_bytes`` or ``write_text``) that stops with a full disk halfway."""

    def failing(path: Path, data, *args, **kwargs):
        write(path, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return failing


def test_publish_round_trip(tmp_zoo):
    model = zoo.load_pretrained(ENTRY)
    entry = zoo.get_weights(ENTRY)
    republished = publish_copy("copy")
    assert republished.num_params == entry.num_params
    assert republished.preprocessing == entry.preprocessing and republished.categories == entry.categories
    assert republished.file == f"copy-{republished.sha256[:8]}.safetensors"  # content-addressed
    assert zoo.get_weights("copy").sha256 == registry.sha256_of(tmp_zoo / republished.file)
    for name, tensor in zoo.load_pretrained("copy").state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)


def test_publishing_over_an_entry_needs_overwrite_and_changes_nothing(tmp_zoo):
    before = snapshot(tmp_zoo)
    with pytest.raises(PublishError, match=f"zoo entry '{ENTRY}' already exists.*--overwrite"):
        publish_copy(ENTRY, retrained())
    assert snapshot(tmp_zoo) == before


def test_overwrite_replaces_the_entry_and_removes_its_old_file(tmp_zoo):
    old = zoo.get_weights(ENTRY)
    model = retrained()
    new = publish_copy(ENTRY, model, overwrite=True)
    assert new.file != old.file and not (tmp_zoo / old.file).exists()
    torch.testing.assert_close(zoo.load_pretrained(ENTRY).network[1].weight, model.network[1].weight)
    assert_all_entries_load()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_zoo, value):
    model = zoo.load_pretrained(ENTRY)
    with torch.no_grad():
        model.network[3].bias[2] = value
    before = snapshot(tmp_zoo)
    with pytest.raises(PublishError, match=r"tensor network\.3\.bias has 1 non-finite value"):
        publish_copy("broken", model)
    assert snapshot(tmp_zoo) == before


@pytest.mark.parametrize("name", ["../x", "a/b", "{tmp_path}/x", "", "Upper", "a.b", "_x", "x" * 101, "x\n"])
def test_an_invalid_name_is_refused_before_anything_is_written(tmp_path, tmp_zoo, name):
    before = snapshot(tmp_path)  # the zoo and the folder above it
    with pytest.raises(PublishError, match="invalid zoo entry name"):
        publish_copy(name.format(tmp_path=tmp_path))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["new_entry", ENTRY])
@pytest.mark.parametrize("method", ["write_bytes", "write_text"])
def test_a_full_disk_while_publishing_leaves_the_zoo_as_it_was(tmp_zoo, monkeypatch, name, method):
    """Full disk halfway through the weights (``write_bytes``) or the manifest
    (``write_text``), for a new entry and over an existing one: no temp file, no new
    file, every old entry intact."""
    model = retrained()
    before = snapshot(tmp_zoo)
    monkeypatch.setattr(Path, method, fail_halfway(getattr(Path, method)))
    with pytest.raises(OSError, match="No space left"):
        publish_copy(name, model, overwrite=True)
    monkeypatch.undo()
    assert snapshot(tmp_zoo) == before
    assert_all_entries_load()


def test_a_truncated_manifest_is_not_replaced(tmp_zoo):
    entry, model = zoo.get_weights(ENTRY), zoo.load_pretrained(ENTRY)
    manifest = tmp_zoo / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])  # a crash mid-write
    before = snapshot(tmp_zoo)
    with pytest.raises(PublishError, match=f"manifest {manifest} is not valid JSON.*fix or restore it"):
        publish("new_entry", model, entry.model, entry.recipe, Digits(), {"test/acc": 0.5})
    assert snapshot(tmp_zoo) == before


def test_a_checkpoint_of_another_algorithm_is_refused(tmp_zoo, checkpoints):
    before = snapshot(tmp_zoo)
    recipe = str(CONFIGS / "quickstart.yaml")
    with pytest.raises(PublishError, match=r"holds a CounterHebb .* builds a BackProp"):
        publish_from_checkpoint("new_entry", recipe, str(checkpoints["ch"]), [])
    assert snapshot(tmp_zoo) == before


def test_a_checkpoint_of_another_architecture_is_refused(tmp_zoo, checkpoints):
    before = snapshot(tmp_zoo)
    recipe, wider = str(CONFIGS / "quickstart.yaml"), ["--model.init_args.network.init_args.hidden", "[256]"]
    with pytest.raises(PublishError, match=r"network\.1\.weight has shape \(128, 64\), the recipe's model \(256, 64\)"):
        publish_from_checkpoint("new_entry", recipe, str(checkpoints["bp"]), wider)
    assert snapshot(tmp_zoo) == before


def test_publish_from_checkpoint_records_the_checkpoints_algorithm(tmp_zoo, tmp_path, checkpoints):
    extra = ["--trainer.default_root_dir", str(tmp_path / "test"), "--trainer.enable_progress_bar", "false"]
    entry = publish_from_checkpoint("ch_tiny", str(CONFIGS / "quickstart_ch.yaml"), str(checkpoints["ch"]), extra)
    assert entry.algorithm == "CounterHebb" and 0.0 <= entry.metrics["test/acc"] <= 1.0
    state = torch.load(checkpoints["ch"], map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in zoo.load_pretrained("ch_tiny").state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    assert_all_entries_load()


def test_the_command_line_prints_one_error_line(tmp_zoo, checkpoints, capsys):
    before = snapshot(tmp_zoo)
    with pytest.raises(SystemExit) as exit_info:
        _main([ENTRY, "--config", str(CONFIGS / "quickstart.yaml"), "--ckpt", str(checkpoints["bp"])])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: zoo entry '{ENTRY}' already exists") and err.count("\n") == 1
    assert snapshot(tmp_zoo) == before
