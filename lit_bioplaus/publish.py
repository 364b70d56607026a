"""Adding entries to the model zoo: test a checkpoint with its recipe, then write the
weights and the measured metrics.

    python -m lit_bioplaus.publish NAME --config configs/bp/....yaml --ckpt CKPT

writes ``NAME.safetensors`` and the manifest entry into ``registry.zoo_dir()`` (the
checkout's ``zoo/`` or ``$LIT_BIOPLAUS_ZOO``), both atomically. It sits above the CLI,
which it runs; the registry (``lit_bioplaus.registry``) sits below the algorithms.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lit_bioplaus.algorithms import BioplausModule
from lit_bioplaus.cli import main
from lit_bioplaus.data import VisionDataModule
from lit_bioplaus.io import atomic_save_file, atomic_write_text
from lit_bioplaus.registry import DEFAULT_URL, Weights, read_manifest, sha256_of, zoo_dir


def architecture_summary(model: BioplausModule) -> str:
    """E.g. ``MLP 784-500-10 ReLU``: the kind of network, its widths and activations."""
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
    datamodule: VisionDataModule,
    metrics: dict[str, float],
    command: str = "",
) -> Weights:
    """Write ``model``'s weights to ``<zoo>/NAME.safetensors`` and its entry, with the
    data's shape, classes and preprocessing, to the manifest."""
    directory = zoo_dir()
    path = directory / f"{name}.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save_file(state, path, metadata={"name": name, "recipe": recipe})
    entry = Weights(
        name=name,
        file=path.name,
        sha256=sha256_of(path),
        file_size=path.stat().st_size,
        algorithm=type(model).__name__,
        weight_mode=model.network.weighted_layers()[0].weight_mode,
        architecture=architecture_summary(model),
        dataset=type(datamodule).__name__,
        recipe=recipe,
        num_params=sum(t.numel() for t in state.values()),
        metrics={k: round(float(v), 6) for k, v in metrics.items()},
        model=model_config,
        command=command,
        url=f"{DEFAULT_URL}/{path.name}",
        input_shape=tuple(datamodule.input_shape),
        num_classes=datamodule.num_classes,
        num_tasks=datamodule.num_tasks,
        categories=tuple(datamodule.classes),
        preprocessing=datamodule.preprocessing().config(),
    )
    manifest = read_manifest()
    manifest[name] = entry.to_manifest()
    # the manifest read above: the private zoo's, or (in a checkout) zoo/manifest.json,
    # which the packaged lit_bioplaus/resources/manifest.json links to
    atomic_write_text(directory / "manifest.json", json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return entry


def publish_from_checkpoint(name: str, config: str, ckpt: str, extra_args: list[str]) -> Weights:
    """Test ``ckpt`` with the recipe ``config`` through the CLI and publish the result."""
    args = ["--config", config, "--trainer.logger", "false", *extra_args]
    cli = main(args, run=False)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    model_section = json.loads(cli.parser.dump(cli.config, format="json", skip_none=False))["model"]
    model_section["init_args"].update(
        num_classes=cli.model.num_classes, input_shape=list(cli.model.input_shape), num_tasks=cli.model.num_tasks
    )
    command = f"lit-bioplaus fit --config {config} && lit-bioplaus test --config {config} --ckpt_path CKPT"
    return publish(name, cli.model, model_section, config, cli.datamodule, results[0], command)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_bioplaus.publish", description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--config", required=True, help="recipe config, e.g. configs/bp/...yaml")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint to publish")
    args, extra = parser.parse_known_args()
    entry = publish_from_checkpoint(args.name, args.config, args.ckpt, extra)
    print(json.dumps({k: v for k, v in entry.to_manifest().items() if k != "model"}, indent=2))


if __name__ == "__main__":
    _main()
