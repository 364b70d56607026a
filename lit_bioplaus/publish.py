"""Adding entries to the model zoo: test a checkpoint with its recipe, then write the
weights and the measured metrics.

    python -m lit_bioplaus.publish NAME --config configs/bp/....yaml --ckpt CKPT [--overwrite]

writes ``NAME-<sha256[:8]>.safetensors`` and the manifest entry into
``registry.zoo_dir()`` (the checkout's ``zoo/`` or ``$LIT_BIOPLAUS_ZOO``). It sits above
the CLI, which it runs; the registry (``lit_bioplaus.registry``) sits below the algorithms.

Publishing is a transaction whose only commit point is the manifest's atomic rename:

1. Everything is checked before anything is written: the name (``NAME_PATTERN``: lower-case
   letters, digits and underscores, starting with a letter or digit, at most 100
   characters, so it can neither leave the zoo folder nor clash on a case-insensitive
   file system), that the manifest parses (a damaged one is never replaced, so its other
   entries can still be recovered), that ``NAME`` is new unless ``overwrite``, and that
   every tensor is finite; ``publish_from_checkpoint`` also checks, before testing, that
   the checkpoint holds the recipe's module class and architecture.
2. The weights go to a new, content-addressed file (like torchvision's
   ``resnet18-f37072fd.pth``), written to a temporary file, fsynced and renamed, then
   checked against the sha256 of the serialized bytes. An existing entry's file is never
   touched: a republished entry gets a new file name, the same one only when the bytes are
   identical.
3. The manifest is written last, atomically. Only then is the replaced entry's old file
   removed (if no entry refers to it any more).

A failure (an exception, a full disk) before step 3 removes the new file and leaves the
zoo as it was; a kill leaves at most an unreferenced file (a ``.*.tmp`` or the new weights
before step 3, the old weights after it), never an entry pointing to a missing or partial
file. Two publishers running at once on one zoo are not serialized: run one at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from safetensors.torch import save
from torch import Tensor

from lit_bioplaus.algorithms import BioplausModule
from lit_bioplaus.cli import loaded_object, main
from lit_bioplaus.data import VisionDataModule
from lit_bioplaus.errors import explain, first_line
from lit_bioplaus.io import atomic_write, atomic_write_text
from lit_bioplaus.registry import DEFAULT_URL, Weights, sha256_of, zoo_dir

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_]{0,99}")
"""Valid entry names (matched in full)."""


class PublishError(ValueError):
    """Publishing was refused; the zoo is unchanged. The message is one line for the user."""


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


def check_name(name: str) -> None:
    """Refuse a name that is not a ``NAME_PATTERN`` (e.g. ``../x``, ``a/b``, ``A``, ``a.b``)."""
    if not NAME_PATTERN.fullmatch(name):
        raise PublishError(
            f"invalid zoo entry name {name!r}: use 1-100 lower-case letters, digits and underscores, "
            "starting with a letter or digit (e.g. bp_mlp500_fashion_mnist)"
        )


def zoo_manifest_path() -> Path:
    """``<zoo>/manifest.json``, the file ``publish`` replaces."""
    try:
        return zoo_dir() / "manifest.json"
    except RuntimeError as err:
        raise PublishError(str(err)) from None


def read_zoo_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest at ``path`` (empty if there is none); one that does not parse is refused."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as err:
        raise PublishError(
            f"manifest {path} is not valid JSON ({err}); fix or restore it (e.g. `git checkout {path.name}`) "
            "before publishing, it was left untouched"
        ) from None
    if not isinstance(manifest, dict) or not all(isinstance(entry, dict) for entry in manifest.values()):
        raise PublishError(f"manifest {path} is not a JSON object of entries; fix or restore it before publishing")
    return manifest


def check_new(name: str, manifest: Mapping[str, Any], path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing entry unless ``overwrite``."""
    if name in manifest and not overwrite:
        raise PublishError(
            f"zoo entry {name!r} already exists in {path}; pass overwrite=True (--overwrite) to replace it"
        )


def check_finite(state: Mapping[str, Tensor], name: str) -> None:
    """Refuse weights with a NaN or an infinity, naming the first such tensor."""
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise PublishError(
                    f"refusing to publish {name!r}: tensor {key} has {bad} non-finite value(s) (NaN or inf)"
                )


def check_can_publish(name: str, overwrite: bool = False) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The checks that need no weights (name, manifest, existing entry): the manifest's
    path and its entries."""
    check_name(name)
    path = zoo_manifest_path()
    manifest = read_zoo_manifest(path)
    check_new(name, manifest, path, overwrite)
    return path, manifest


def referenced_files(manifest: Mapping[str, Mapping[str, Any]]) -> set[str]:
    return {entry.get("file") for entry in manifest.values()}


def write_weights(path: Path, data: bytes, digest: str) -> None:
    """``data`` at ``path`` (atomically; kept if already there), checked against ``digest``."""
    if not (path.is_file() and sha256_of(path) == digest):
        atomic_write(path, lambda temporary: temporary.write_bytes(data))
    written = sha256_of(path)
    if written != digest:
        raise PublishError(f"{path} reads back with sha256 {written}, not the {digest} written; nothing was published")


def remove_unreferenced(path: Path, manifest: Mapping[str, Mapping[str, Any]]) -> None:
    """Delete the weights file ``path`` unless an entry of ``manifest`` refers to it."""
    if path.name not in referenced_files(manifest):
        path.unlink(missing_ok=True)


def publish(
    name: str,
    model: BioplausModule,
    model_config: dict[str, Any],
    recipe: str,
    datamodule: VisionDataModule,
    metrics: dict[str, float],
    command: str = "",
    overwrite: bool = False,
) -> Weights:
    """Write ``model``'s weights to ``<zoo>/NAME-<sha256[:8]>.safetensors`` and its entry,
    with the data's shape, classes and preprocessing, to the manifest, as a transaction
    (see the module docstring).

    Raises:
        PublishError: an invalid name, an unparseable manifest, an existing entry without
            ``overwrite`` or non-finite weights; nothing was written.
        OSError: writing failed (e.g. a full disk); the zoo is as it was.
    """
    manifest_file, manifest = check_can_publish(name, overwrite)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, name)
    data = save(state, metadata={"name": name, "recipe": recipe})
    digest = hashlib.sha256(data).hexdigest()
    path = manifest_file.parent / f"{name}-{digest[:8]}.safetensors"
    entry = Weights(
        name=name,
        file=path.name,
        sha256=digest,
        file_size=len(data),
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
    updated = dict(sorted({**manifest, name: entry.to_manifest()}.items()))
    try:
        write_weights(path, data, digest)
        # the private zoo's manifest, or (in a checkout) zoo/manifest.json, which the
        # packaged lit_bioplaus/resources/manifest.json links to
        atomic_write_text(manifest_file, json.dumps(updated, indent=2) + "\n")
    except BaseException:
        remove_unreferenced(path, manifest)
        raise
    if name in manifest:
        try:
            remove_unreferenced(manifest_file.parent / manifest[name]["file"], updated)
        except OSError as err:
            rank_zero_warn(f"published {name!r}, but could not remove its previous weights file: {err}")
    return entry


def read_checkpoint(ckpt: str) -> dict[str, Any]:
    """A Lightning checkpoint, loaded weights-only (no code from the file runs)."""
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise PublishError(
            f"cannot read checkpoint {ckpt}: it is not a PyTorch checkpoint, or it holds objects that "
            "weights-only loading refuses"
        ) from None
    except Exception as err:  # a missing, truncated or corrupt file
        raise PublishError(f"cannot read checkpoint {ckpt}: {first_line(err)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise PublishError(f"{ckpt} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def check_module_class(checkpoint: Mapping[str, Any], model: BioplausModule, ckpt: str, recipe: str) -> None:
    """Refuse a checkpoint whose module class (``hyper_parameters._class_path``, written
    by the LightningCLI) is not the recipe's: the algorithm cannot be told from the
    weights (BackProp and Counter-Hebb have the same state dict)."""
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not isinstance(class_path, str):
        raise PublishError(
            f"checkpoint {ckpt} does not record its module class (hyper_parameters._class_path); "
            "publish a checkpoint written by `lit-bioplaus fit`"
        )
    if loaded_object(class_path) is not type(model):
        raise PublishError(
            f"checkpoint {ckpt} holds a {class_path.rpartition('.')[2]} ({class_path}), but the recipe {recipe} "
            f"builds a {type(model).__name__}; publish it with a recipe of its own algorithm"
        )


def check_state_dict(state: Mapping[str, Tensor], model: BioplausModule, ckpt: str, recipe: str) -> None:
    """Refuse a checkpoint whose state dict does not fit the recipe's model, naming the
    first missing, unexpected or differently shaped tensor."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise PublishError(f"checkpoint {ckpt} does not fit the recipe {recipe}: it lacks {key}")
        if state[key].shape != tensor.shape:
            raise PublishError(
                f"checkpoint {ckpt} does not fit the recipe {recipe}: {key} has shape {tuple(state[key].shape)}, "
                f"the recipe's model {tuple(tensor.shape)}"
            )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise PublishError(f"checkpoint {ckpt} does not fit the recipe {recipe}: the model has no {unexpected[0]}")


def publish_from_checkpoint(
    name: str, config: str, ckpt: str, extra_args: list[str], overwrite: bool = False
) -> Weights:
    """Test ``ckpt`` with the recipe ``config`` through the CLI and publish the result.

    Before testing, refuses (``PublishError``) what ``publish`` would, and a checkpoint of
    another module class or architecture than the recipe's (so the algorithm recorded is
    the checkpoint's) or with non-finite weights.
    """
    check_can_publish(name, overwrite)
    checkpoint = read_checkpoint(ckpt)
    args = ["--config", config, "--trainer.logger", "false", *extra_args]
    cli = main(args, run=False)
    check_module_class(checkpoint, cli.model, ckpt, config)
    check_state_dict(checkpoint["state_dict"], cli.model, ckpt, config)
    check_finite(checkpoint["state_dict"], name)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    model_section = json.loads(cli.parser.dump(cli.config, format="json", skip_none=False))["model"]
    model_section["init_args"].update(
        num_classes=cli.model.num_classes, input_shape=list(cli.model.input_shape), num_tasks=cli.model.num_tasks
    )
    command = f"lit-bioplaus fit --config {config} && lit-bioplaus test --config {config} --ckpt_path CKPT"
    return publish(name, cli.model, model_section, config, cli.datamodule, results[0], command, overwrite)


def _main(argv: Sequence[str] | None = None) -> None:
    """``python -m lit_bioplaus.publish``: a refusal or a failed write is one ``error:``
    line, exit status 1 (``LIT_BIOPLAUS_DEBUG=1`` shows the traceback)."""
    parser = argparse.ArgumentParser(prog="python -m lit_bioplaus.publish", description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--config", required=True, help="recipe config, e.g. configs/bp/...yaml")
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint to publish")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing entry of the same name")
    args, extra = parser.parse_known_args(argv)
    try:
        entry = publish_from_checkpoint(args.name, args.config, args.ckpt, extra, overwrite=args.overwrite)
    except Exception as err:
        message = str(err) if isinstance(err, (PublishError, OSError)) else explain(err)
        if message is None or os.environ.get("LIT_BIOPLAUS_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps({k: v for k, v in entry.to_manifest().items() if k != "model"}, indent=2))


if __name__ == "__main__":
    _main()
