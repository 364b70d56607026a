"""Model zoo: every published entry matches its metadata; tampered files are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_bioplaus import registry, zoo
from lit_bioplaus.cli import main
from lit_bioplaus.data import Digits

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
    cli = main(["--zoo", name, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
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


def test_a_missing_file_is_taken_from_the_next_source(tmp_zoo, monkeypatch):
    entry = zoo.get_weights("bp_mlp128_digits")
    (tmp_zoo / entry.file).unlink()
    assert entry.fetch() == registry.checkout_zoo_dir() / entry.file  # verified there too
    monkeypatch.setattr(registry, "checkout_zoo_dir", lambda: None)
    monkeypatch.setenv("LIT_BIOPLAUS_CACHE", str(tmp_zoo / "cache"))
    with pytest.raises(zoo.ZooDownloadError, match="could not download"):  # the default URL is not served here
        monkeypatch.setenv("LIT_BIOPLAUS_ZOO_URL", (tmp_zoo / "nowhere").as_uri())
        entry.fetch()


def test_cli_starts_from_a_zoo_entry(capsys):
    entry = zoo.get_weights("bp_mlp128_digits")
    cli = main(["--zoo", "bp_mlp128_digits", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"],
               run=False)  # fmt: skip
    assert cli.config.zoo == "bp_mlp128_digits" and cli.model.hparams.pretrained == "bp_mlp128_digits"
    reference = zoo.load_pretrained("bp_mlp128_digits")
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(cli.model.state_dict()[name], tensor)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert results[0]["test/acc"] == pytest.approx(entry.metrics["test/acc"], abs=1e-6)


def test_zoo_is_a_parser_argument_and_later_arguments_override_its_recipe(capsys):
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    assert "--zoo NAME" in capsys.readouterr().out
    cli = main(["--zoo", "bp_mlp128_digits", "--data.batch_size", "7", "--trainer.logger", "false"], run=False)
    assert cli.datamodule.batch_size == 7
    with pytest.raises(SystemExit):
        main(["--zoo", "resnet9000"], run=False)
    assert "unknown zoo entry 'resnet9000'" in capsys.readouterr().err


@pytest.fixture
def served_zoo(tmp_path, monkeypatch):
    """No local zoo (as after a wheel install): weights come from a ``file://`` URL (a copy
    of the checkout's zoo) into a temporary cache."""
    served = tmp_path / "served"
    shutil.copytree(registry.checkout_zoo_dir(), served)
    monkeypatch.delenv("LIT_BIOPLAUS_ZOO", raising=False)
    monkeypatch.setattr(registry, "checkout_zoo_dir", lambda: None)
    monkeypatch.setenv("LIT_BIOPLAUS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIT_BIOPLAUS_ZOO_URL", served.as_uri())
    return served


def test_weights_are_fetched_into_the_cache_and_verified(served_zoo, tmp_path):
    entry = zoo.get_weights("bp_mlp128_digits")
    assert entry.download_url == f"{served_zoo.as_uri()}/{entry.file}"
    model = zoo.load_pretrained("bp_mlp128_digits")
    cached = tmp_path / "cache" / entry.file
    assert registry.sha256_of(cached) == entry.sha256
    reference = zoo.build_model({**entry.model, "init_args": {**entry.model["init_args"], "pretrained": None}})
    reference.load_state_dict(load_file(served_zoo / entry.file))
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_a_tampered_cached_file_is_refused_and_fetched_again(served_zoo, tmp_path):
    entry = zoo.get_weights("bp_mlp128_digits")
    cached = entry.fetch()
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted"):
        assert entry.fetch() == cached
    assert registry.sha256_of(cached) == entry.sha256


def test_a_failed_download_leaves_nothing_in_the_cache(served_zoo, tmp_path):
    entry = zoo.get_weights("bp_mlp128_digits")
    (served_zoo / entry.file).unlink()
    with pytest.raises(zoo.ZooDownloadError, match="could not download"):
        entry.fetch()
    (served_zoo / entry.file).write_bytes(b"not the weights")
    with pytest.raises(zoo.ZooIntegrityError, match="was not kept"):
        entry.fetch()
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # no partial or temporary file


def _raw_test_split(entry: zoo.Weights) -> tuple[torch.Tensor, torch.Tensor]:
    """The entry's test split as raw images in [0, 1] ``(N, C, H, W)`` and labels ``(N, T)``,
    straight from the recipe's DataModule (before its preprocessing)."""
    cli = main(["--config", str(entry.recipe_path), "--trainer.logger", "false"], run=False)
    datamodule = cli.datamodule
    datamodule.setup("test")
    images = datamodule.test_set.images.float() / 255
    return images, datamodule.test_set.targets.view(len(images), -1)


@pytest.mark.parametrize("name", PUBLISHED)
def test_transforms_on_raw_images_give_the_manifest_accuracy(name):
    """``transforms()`` is the DataModule's preprocessing: a user's raw [0, 1] images
    through it give the entry's test accuracy."""
    entry = zoo.get_weights(name)
    model = zoo.load_pretrained(name)
    images, labels = _raw_test_split(entry)
    assert tuple(images.shape[1:]) == entry.input_shape or entry.preprocessing["pad"]
    assert len(entry.categories) == entry.num_classes == model.num_classes
    with torch.no_grad():
        inputs = entry.transforms()(images)
        assert tuple(inputs.shape[1:]) == entry.input_shape
        logits = model(inputs)  # guided: (N, T, C), every task
    correct = (logits.argmax(-1).view(len(images), -1) == labels).float()
    assert correct.mean().item() == pytest.approx(entry.metrics["test/acc"], abs=2e-6)


def test_get_model_replaces_the_head_and_keeps_the_rest():
    reference = zoo.load_pretrained("bp_mlp500_fashion_mnist")
    assert not reference.training and zoo.load_pretrained("bp_mlp500_fashion_mnist", train=True).training
    model = zoo.get_model("bp_mlp500_fashion_mnist", num_classes=5)
    assert model.training and model.num_classes == 5
    head = len(model.network) - 1
    assert model.network[head].weight.shape == (5, 500)
    for key, tensor in reference.state_dict().items():
        if not key.startswith(f"network.{head}."):
            torch.testing.assert_close(model.state_dict()[key], tensor)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 5)


def test_the_wheel_ships_the_zoo_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a folder of its own, and from outside the
    checkout list the zoo, load an entry from a ``file://`` URL into a fresh cache and
    run ``lit-bioplaus test --zoo`` on Digits."""
    root = Path(__file__).resolve().parents[1]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(root), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("lit_bioplaus-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    script = f"""
import lit_bioplaus, sys
from lit_bioplaus import zoo
assert lit_bioplaus.__file__.startswith({str(site)!r}), lit_bioplaus.__file__
names = zoo.list_models()
assert {sorted(PUBLISHED)!r} == names, names
model = zoo.load_pretrained("bp_mlp128_digits")
print("cached", sorted(p.name for p in zoo.cache_dir().iterdir()))
from lit_bioplaus.cli import main
args = ["--zoo", "bp_mlp128_digits", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
cli = main(args, run=False)
print("acc", cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"])
"""
    environment = {
        **os.environ,
        "PYTHONPATH": str(site),
        "LIT_BIOPLAUS_CACHE": str(tmp_path / "cache"),
        "LIT_BIOPLAUS_ZOO_URL": (root / "zoo").as_uri(),
    }
    environment.pop("LIT_BIOPLAUS_ZOO", None)
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "cached ['bp_mlp128_digits.safetensors']" in run.stdout
    accuracy = float(run.stdout.split("acc ")[1].split()[0])
    assert accuracy == pytest.approx(zoo.get_weights("bp_mlp128_digits").metrics["test/acc"], abs=2e-6)
    command = [sys.executable, "-m", "lit_bioplaus", "test", "--zoo", "bp_mlp128_digits", "--trainer.logger", "false",
               "--trainer.enable_progress_bar", "false"]  # fmt: skip
    console = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert console.returncode == 0, console.stderr[-3000:]
    assert f"{accuracy:.6f}"[:6] in console.stdout  # the metrics table of `lit-bioplaus test --zoo`


def test_fit_trains_a_module_loaded_for_inference_in_train_mode(tmp_path):
    import lightning as L

    class RecordMode(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.training and all(module.training for module in pl_module.modules()))

    modes: list[bool] = []
    model = zoo.load_pretrained("bp_mlp128_digits")
    assert not model.training
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        limit_val_batches=0, callbacks=[RecordMode()], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, datamodule=Digits())
    assert modes == [True, True]
