"""Model zoo: pretrained weights with the metadata that produced them.

Modelled on torchvision's multi-weight API. Every entry of ``zoo/manifest.json``
names a safetensors file, its sha256 and size, the algorithm, weight mode,
architecture, data set, the recipe config that trained it, the full model
config, the number of parameters and the test metrics measured by ``test``.

>>> from lit_bioplaus import zoo
>>> zoo.list_models()                          # doctest: +SKIP
['bp_mlp500_fashion_mnist', ...]
>>> model = zoo.load_pretrained("bp_mlp500_fashion_mnist")  # doctest: +SKIP

A file whose sha256 differs from the manifest is refused (``ZooIntegrityError``).
Publishing (``python -m lit_bioplaus.zoo publish NAME --config RECIPE --ckpt CKPT``)
runs ``test`` on the checkpoint, then writes the weights and the measured metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from safetensors.torch import load_file
from torch import Tensor

from lit_bioplaus.algorithms import BioplausModule
from lit_bioplaus.io import atomic_save_file, atomic_write_text

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def zoo_dir() -> Path:
    """Folder holding the weights and ``manifest.json`` (``$LIT_BIOPLAUS_ZOO`` or ``<repo>/zoo``)."""
    return Path(os.environ.get("LIT_BIOPLAUS_ZOO", PROJECT_ROOT / "zoo"))


class ZooIntegrityError(RuntimeError):
    """A zoo file is missing or its sha256 differs from the manifest."""


@dataclass(frozen=True)
class Weights:
    """One zoo entry: a weights file and the metadata of the run that produced it."""

    name: str
    file: str
    sha256: str
    file_size: int
    algorithm: str
    weight_mode: str
    architecture: str
    dataset: str
    recipe: str
    num_params: int
    metrics: dict[str, float]
    model: dict[str, Any] = field(repr=False)
    command: str = ""

    @property
    def path(self) -> Path:
        return zoo_dir() / self.file

    @property
    def recipe_path(self) -> Path:
        """The recipe config, relative to the project root."""
        return PROJECT_ROOT / self.recipe

    def verify(self) -> Path:
        """Return the weights path after checking its sha256 against the manifest."""
        if not self.path.is_file():
            raise ZooIntegrityError(f"zoo entry {self.name!r}: weights file {self.path} is missing")
        digest = sha256_of(self.path)
        if digest != self.sha256:
            raise ZooIntegrityError(
                f"zoo entry {self.name!r}: {self.path} has sha256 {digest}, but the manifest "
                f"says {self.sha256}. The file was modified or corrupted; refusing to load it."
            )
        return self.path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_path() -> Path:
    return zoo_dir() / "manifest.json"


def _read_manifest() -> dict[str, dict[str, Any]]:
    path = _manifest_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def list_models() -> list[str]:
    """Names of all zoo entries, sorted."""
    return sorted(_read_manifest())


def get_weights(name: str) -> Weights:
    """The zoo entry called ``name`` (``ValueError`` listing the entries if unknown)."""
    manifest = _read_manifest()
    if name not in manifest:
        raise ValueError(f"unknown zoo entry {name!r}; available: {', '.join(sorted(manifest)) or 'none'}")
    return Weights(name=name, **manifest[name])


def load_state_dict(name: str) -> dict[str, Tensor]:
    """The verified state dict of zoo entry ``name`` (safetensors, no pickle)."""
    return load_file(get_weights(name).verify())


def _model_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BioplausModule, "model")
    return parser


def build_model(model_config: dict[str, Any]) -> BioplausModule:
    """Instantiate a module from its ``{"class_path": ..., "init_args": ...}`` config."""
    parser = _model_parser()
    config = parser.parse_object({"model": model_config})
    return parser.instantiate_classes(config).model


def load_pretrained(name: str) -> BioplausModule:
    """The LightningModule of zoo entry ``name`` with its verified weights, in eval mode."""
    entry = get_weights(name)
    config = json.loads(json.dumps(entry.model))
    config.setdefault("init_args", {})["pretrained"] = None
    model = build_model(config)
    model.load_state_dict(load_state_dict(name))
    return model.eval()


def _architecture_summary(model: BioplausModule) -> str:
    widths = [model.network.weighted_layers()[0].weight.shape[1]]
    kinds = []
    for layer in model.network.weighted_layers():
        widths.append(layer.weight.shape[0])
        kinds.append(type(layer).__name__.removeprefix("TwoStream"))
    kind = "MLP" if set(kinds) == {"Linear"} else "ConvNet"
    activation = ",".join(sorted({type(module.activation).__name__ for module in model.network.activations()}))
    return f"{kind} {'-'.join(str(w) for w in widths)} {activation}"


def publish(
    name: str,
    model: BioplausModule,
    model_config: dict[str, Any],
    recipe: str,
    dataset: str,
    metrics: dict[str, float],
    command: str = "",
) -> Weights:
    """Write ``model``'s weights to ``zoo/NAME.safetensors`` and its entry to the manifest."""
    directory = zoo_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_file(state, path, metadata={"name": name, "recipe": recipe})
    layers = model.network.weighted_layers()
    entry = Weights(
        name=name,
        file=path.name,
        sha256=sha256_of(path),
        file_size=path.stat().st_size,
        algorithm=type(model).__name__,
        weight_mode=layers[0].weight_mode,
        architecture=_architecture_summary(model),
        dataset=dataset,
        recipe=recipe,
        num_params=sum(t.numel() for t in state.values()),
        metrics={k: round(float(v), 6) for k, v in metrics.items()},
        model=model_config,
        command=command,
    )
    manifest = _read_manifest()
    manifest[name] = {k: v for k, v in asdict(entry).items() if k != "name"}
    atomic_write_text(_manifest_path(), json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return entry


def publish_from_checkpoint(name: str, config: str, ckpt: str, extra_args: list[str]) -> Weights:
    """Test ``ckpt`` with the recipe ``config`` through the CLI and publish the result."""
    from lit_bioplaus.cli import main

    args = ["--config", config, "--trainer.logger", "false", *extra_args]
    cli = main(args, run=False)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    model_config = cli.parser.dump(cli.config, format="json", skip_none=False)
    model_section = json.loads(model_config)["model"]
    model_section["init_args"].pop("num_classes", None)
    model_section["init_args"].pop("input_shape", None)
    model_section["init_args"].update(
        num_classes=cli.model.num_classes, input_shape=list(cli.model.input_shape), num_tasks=cli.model.num_tasks
    )
    command = f"lit-bioplaus fit --config {config} && lit-bioplaus test --config {config} --ckpt_path CKPT"
    return publish(
        name,
        cli.model,
        model_section,
        recipe=config,
        dataset=type(cli.datamodule).__name__,
        metrics=results[0],
        command=command,
    )


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_bioplaus.zoo", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the zoo entries")
    publish_parser = commands.add_parser("publish", help="test a checkpoint and add it to the zoo")
    publish_parser.add_argument("name")
    publish_parser.add_argument("--config", required=True, help="recipe config, e.g. configs/bp/...yaml")
    publish_parser.add_argument("--ckpt", required=True, help="Lightning checkpoint to publish")
    args, extra = parser.parse_known_args()
    if args.command == "list":
        for name in list_models():
            entry = get_weights(name)
            print(f"{name:40s} {entry.dataset:14s} {entry.metrics.get('test/acc', float('nan')):.4f}")
        return
    entry = publish_from_checkpoint(args.name, args.config, args.ckpt, extra)
    print(json.dumps({k: v for k, v in asdict(entry).items() if k != "model"}, indent=2))


if __name__ == "__main__":
    _main()
