"""Model zoo: pretrained modules with the metadata that produced them.

Modelled on torchvision's multi-weight API. Every entry of the manifest names a
safetensors file, its sha256, size and download URL, the algorithm, weight mode,
architecture, data set, the recipe config that trained it, the full model config, the
number of parameters, the test metrics measured by ``test``, and the data's input shape,
class names and preprocessing (``Weights.transforms()``).

>>> from lit_bioplaus import zoo
>>> zoo.list_models()                                              # doctest: +SKIP
['bp_mlp128_digits', ...]
>>> weights = zoo.get_weights("bp_mlp500_fashion_mnist")           # doctest: +SKIP
>>> model = zoo.load_pretrained("bp_mlp500_fashion_mnist")         # eval mode  # doctest: +SKIP
>>> probabilities = model(weights.transforms()(images)).softmax(-1)  # doctest: +SKIP
>>> finetune = zoo.get_model("bp_mlp500_fashion_mnist", num_classes=5)  # new head, train mode  # doctest: +SKIP

Files are fetched on first use and verified by sha256 (``lit_bioplaus.registry``);
a file that does not match is refused (``ZooIntegrityError``). New entries are added by
``python -m lit_bioplaus.publish`` (``lit_bioplaus.publish``).
"""

from __future__ import annotations

import json
from typing import Any

from jsonargparse import ArgumentParser

from lit_bioplaus.algorithms import BioplausModule
from lit_bioplaus.registry import (
    Weights,
    ZooDownloadError,
    ZooIntegrityError,
    cache_dir,
    get_weights,
    list_models,
    load_state_dict,
    zoo_dir,
)

__all__ = [
    "Weights",
    "ZooDownloadError",
    "ZooIntegrityError",
    "build_model",
    "cache_dir",
    "get_model",
    "get_weights",
    "list_models",
    "load_pretrained",
    "load_state_dict",
    "zoo_dir",
]


def build_model(model_config: dict[str, Any]) -> BioplausModule:
    """Instantiate a module from its ``{"class_path": ..., "init_args": ...}`` config."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(BioplausModule, "model")
    config = parser.parse_object({"model": model_config})
    return parser.instantiate_classes(config).model


def _entry_config(name: str, **overrides: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(get_weights(name).model))
    config.setdefault("init_args", {}).update(pretrained=None, **overrides)
    return config


def load_pretrained(name: str, train: bool = False) -> BioplausModule:
    """The LightningModule of zoo entry ``name`` with its verified weights.

    Args:
        name: the entry (``list_models()``).
        train: return it in train mode (to fine-tune); by default it is in eval mode, for
            inference. ``Trainer.fit`` puts any module back in train mode anyway.
    """
    model = build_model(_entry_config(name))
    model.load_state_dict(load_state_dict(name))
    return model.train(train)


def get_model(name: str, num_classes: int | None = None, train: bool = True) -> BioplausModule:
    """Zoo entry ``name`` to fine-tune: with ``num_classes`` different from the entry's,
    a freshly initialised prediction head (and whatever else depends on the number of
    classes, e.g. DFA's direct feedback matrices); every other weight is the entry's.

    Raises:
        ValueError: a weight other than the head's does not fit the new module.
    """
    entry = get_weights(name)
    if num_classes is None or num_classes == entry.num_classes:
        return load_pretrained(name, train=train)
    model = build_model(_entry_config(name, num_classes=num_classes))
    state, fresh = load_pretrained(name).state_dict(), model.state_dict()  # the current layout
    mismatched = {key for key, value in state.items() if key in fresh and fresh[key].shape != value.shape}
    unknown = set(state) - set(fresh)
    if unknown:
        raise ValueError(f"zoo entry {name!r} has weights the new module lacks: {sorted(unknown)}")
    head = {f"network.{len(model.network) - 1}."}
    outside_head = sorted(key for key in mismatched if not key.startswith(tuple(head)) and "direct_feedback" not in key)
    if outside_head:
        raise ValueError(f"with num_classes={num_classes}, these weights change shape: {outside_head}")
    model.load_state_dict({key: value for key, value in state.items() if key not in mismatched}, strict=False)
    return model.train(train)


def _main() -> None:
    """``python -m lit_bioplaus.zoo``: list the entries."""
    for name in list_models():
        entry = get_weights(name)
        print(f"{name:40s} {entry.dataset:14s} {entry.metrics.get('test/acc', float('nan')):.4f}")


if __name__ == "__main__":
    _main()
