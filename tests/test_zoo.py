"""Model zoo: every published entry matches its metadata; tampered files are refused."""

from __future__ import annotations

import shutil

import pytest
import torch

from lit_bioplaus import zoo
from lit_bioplaus.cli import expand_zoo_argument, main

PUBLISHED = zoo.list_models()


def test_the_zoo_is_not_empty():
    assert "bp_mlp128_digits" in PUBLISHED
    assert "bp_mlp500_fashion_mnist" in PUBLISHED


@pytest.mark.parametrize("name", PUBLISHED)
def test_entry_matches_its_metadata(name):
    entry = zoo.get_weights(name)
    assert entry.path.stat().st_size == entry.file_size
    assert entry.file_size < 10 * 2**20
    assert entry.recipe_path.is_file()
    assert 0.0 < entry.metrics["test/acc"] <= 1.0
    model = zoo.load_pretrained(name)
    assert not model.training
    assert type(model).__name__ == entry.algorithm
    assert sum(t.numel() for t in model.state_dict().values()) == entry.num_params
    assert model.network.weighted_layers()[0].weight_mode == entry.weight_mode
    per_task = (model.num_tasks,) if model.num_tasks > 1 else ()  # guided: every task's logits
    assert model(torch.zeros(3, *model.input_shape)).shape == (3, *per_task, model.num_classes)


@pytest.mark.parametrize("name", PUBLISHED)
def test_entry_reproduces_its_manifest_metrics(name, tmp_path):
    """Every entry, loaded through the CLI from its recipe, measures on its test split what
    the manifest says (Fashion-MNIST entries read the Debian package's files: .ci/run
    installs ``dataset-fashion-mnist``)."""
    entry = zoo.get_weights(name)
    args = expand_zoo_argument(["test", "--zoo", name])[1:]
    cli = main([*args, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    for metric, value in entry.metrics.items():
        assert results[metric] == pytest.approx(value, abs=2e-6), metric


def test_unknown_entry_lists_the_available_ones():
    with pytest.raises(ValueError, match="bp_mlp500_fashion_mnist"):
        zoo.get_weights("resnet9000")


@pytest.fixture
def tmp_zoo(tmp_path, monkeypatch):
    """A copy of the zoo the test may tamper with."""
    shutil.copytree(zoo.zoo_dir(), tmp_path / "zoo")
    monkeypatch.setenv("LIT_BIOPLAUS_ZOO", str(tmp_path / "zoo"))
    return tmp_path / "zoo"


def test_tampered_file_is_refused(tmp_zoo):
    path = zoo.get_weights("bp_mlp128_digits").path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooIntegrityError, match="sha256"):
        zoo.load_pretrained("bp_mlp128_digits")


def test_missing_file_is_refused(tmp_zoo):
    zoo.get_weights("bp_mlp128_digits").path.unlink()
    with pytest.raises(zoo.ZooIntegrityError, match="missing"):
        zoo.load_state_dict("bp_mlp128_digits")


def test_cli_starts_from_a_zoo_entry(capsys):
    entry = zoo.get_weights("bp_mlp128_digits")
    args = expand_zoo_argument(["test", "--zoo", "bp_mlp128_digits", "--trainer.logger", "false"])
    assert args[:3] == ["test", "--config", str(entry.recipe_path)]
    cli = main([*args[1:], "--trainer.enable_progress_bar", "false"], run=False)
    reference = zoo.load_pretrained("bp_mlp128_digits")
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(cli.model.state_dict()[name], tensor)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert results[0]["test/acc"] == pytest.approx(entry.metrics["test/acc"], abs=1e-6)


def test_publish_round_trip(tmp_zoo):
    model = zoo.load_pretrained("bp_mlp128_digits")
    entry = zoo.get_weights("bp_mlp128_digits")
    republished = zoo.publish("copy", model, entry.model, entry.recipe, entry.dataset, {"test/acc": 0.5})
    assert republished.num_params == entry.num_params
    assert zoo.get_weights("copy").sha256 == zoo.sha256_of(tmp_zoo / "copy.safetensors")
    for name, tensor in zoo.load_pretrained("copy").state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor)
