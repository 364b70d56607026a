"""The ``lit-bioplaus`` command line: LightningCLI with fit / validate / test / predict.

Shapes are never repeated in configs: ``data.num_classes`` and ``data.input_shape``
are linked into the model when both are instantiated. ``--zoo NAME`` starts any
subcommand from a model-zoo entry: its recipe config plus its verified weights.
``--trainer.gradient_clip_val`` becomes the module's own clip (the rules step their
optimizers themselves); ``--trainer.accumulate_grad_batches`` is refused in one line.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import pickle
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml
from fsspec.implementations.local import LocalFileSystem
from jsonargparse import ActionConfigFile, Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_bioplaus.algorithms import BioplausModule
from lit_bioplaus.data import VisionDataModule
from lit_bioplaus.errors import explain
from lit_bioplaus.fault_tolerance import (
    SIGTERM_EXIT_STATUS,
    AtomicCheckpointIO,
    PreemptionCheckpoint,
    StopPeersOnFailure,
)
from lit_bioplaus.prediction import PredictionWriter
from lit_bioplaus.registry import get_weights
from lit_bioplaus.tracking import RunConfigCallback, check_wandb_ready


class ZooAction(argparse.Action):
    """``--zoo NAME``: the recipe config of zoo entry ``NAME``, applied where it stands
    as ``--config`` would be (later arguments override it), and its verified weights
    (``model.init_args.pretrained``)."""

    def __call__(self, parser: Any, cfg: Namespace, values: Any, option_string: str | None = None) -> None:
        try:
            weights = get_weights(values)
        except ValueError as err:
            parser.error(str(err))
        ActionConfigFile.apply_config(parser, cfg, "config", str(weights.recipe_path))
        cfg["model.init_args.pretrained"] = values
        cfg[self.dest] = values


class BioplausCLI(LightningCLI):
    """LightningCLI for lit-bioplaus models and DataModules.

    Adds ``--test_after_fit`` (default true): after ``fit`` the test split is
    evaluated (with the best checkpoint when a monitored ``ModelCheckpoint`` exists)
    and Lightning prints the metrics table.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_tasks", "model.init_args.num_tasks", apply_on="instantiate")
        parser.add_argument(
            "--zoo",
            action=ZooAction,
            metavar="NAME",
            help="start from model-zoo entry NAME: its recipe config (as --config, so put it first) and its "
            "verified weights; see `python -m lit_bioplaus.zoo`",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: evaluate the test split after training and print the metrics table",
        )
        parser.add_argument(
            "--ddp_timeout",
            type=float | None,
            default=None,
            help="with --trainer.strategy ddp: seconds a process waits for the others in a collective before "
            f"failing (default {CPU_DDP_TIMEOUT_S:.0f} on CPU, Lightning's {GPU_DDP_TIMEOUT_S:.0f} otherwise)",
        )

    @property
    def subcommand_config(self) -> Namespace:
        """The parsed config of the subcommand being run (the whole config without one)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Trainer flags that assume automatic optimization: the clip becomes the
        module's, gradient accumulation is refused (one line each, before training)."""
        config = self.subcommand_config
        zoo = config.get("zoo")
        if zoo is not None and config.model.init_args.get("pretrained") != zoo:
            raise SystemExit(
                f"error: `zoo: {zoo}` in a config file does nothing: give --zoo {zoo} on the command line "
                f"(or model.init_args.pretrained: {zoo} and the recipe's settings)"
            )
        move_gradient_clip(config)
        if (config.trainer.get("accumulate_grad_batches") or 1) != 1:
            raise SystemExit(
                "error: --trainer.accumulate_grad_batches is not supported: lit-bioplaus rules step their "
                "optimizers themselves (manual optimization); use a larger --data.batch_size instead"
            )

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: the config (with every explicit override) stays the model's; the
        checkpoint must come from the same rule and network, and where its other
        hyper-parameters differ from the config's, that is said (Lightning would silently
        take the checkpoint's). Remote and ``last`` / ``best`` / ``registry`` paths are
        left to Lightning."""
        if not self.config.get("subcommand"):
            return
        config = self.config[self.config.subcommand]
        path = config.get("ckpt_path")
        if not path or str(path).startswith(("last", "best", "hpc", "registry")):
            return
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return
        if not Path(path).is_file():
            raise SystemExit(f"error: --ckpt_path {path}: no such file")
        weights_only = config.get("weights_only") is not False
        try:
            saved = torch.load(path, weights_only=weights_only, map_location="cpu").get("hyper_parameters", {})
        except pickle.UnpicklingError:
            hint = " (if you trust it and it holds Python objects: --weights_only false)" if weights_only else ""
            raise SystemExit(f"error: cannot read checkpoint {path} safely{hint}") from None
        except Exception:  # any other reason a file is not a readable checkpoint
            raise SystemExit(
                f"error: cannot read checkpoint {path}: it is corrupt, truncated or not a PyTorch checkpoint"
            ) from None
        check_checkpoint_matches(path, saved, config.model)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with atomic checkpoint writes, a resumable checkpoint on SIGTERM
        (see ``lit_bioplaus.fault_tolerance``) and the DDP collective timeout
        (``--ddp_timeout``, default by device: see ``ddp_timeout``)."""
        config = self.subcommand_config
        trainer = super().instantiate_trainer(**kwargs)
        if isinstance(trainer.strategy, DDPStrategy):
            # read when the process group is created, at the start of fit / test
            trainer.strategy._timeout = timedelta(seconds=ddp_timeout(config, trainer))
        elif config.get("ddp_timeout") is not None:
            raise SystemExit(f"error: --ddp_timeout applies to DDP strategies, not {type(trainer.strategy).__name__}")
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.callbacks += [PreemptionCheckpoint(), StopPeersOnFailure()]
        return trainer

    def after_instantiate_classes(self) -> None:
        """Linked options given explicitly must agree with the data; W&B without
        credentials stops here in one line, before any run is created."""
        super().after_instantiate_classes()
        config = self.subcommand_config
        check_linked_options(config, self.model)
        check_wandb_ready(self.trainer.loggers)

    def before_predict(self) -> None:
        """``predict`` keeps its output: a ``PredictionWriter`` saves it in the run folder."""
        if not any(isinstance(callback, PredictionWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def after_fit(self) -> None:
        if not self.config_init[self.subcommand].get("test_after_fit", True):
            return
        checkpoint = self.trainer.checkpoint_callback
        use_best = (
            isinstance(checkpoint, ModelCheckpoint)
            and checkpoint.monitor is not None
            and bool(checkpoint.best_model_path)
        )
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if use_best else None)


CPU_DDP_TIMEOUT_S = 300.0
"""Collective timeout of CPU (gloo) DDP runs: a stalled process fails the run in minutes."""
GPU_DDP_TIMEOUT_S = 1800.0
"""Lightning's (and PyTorch's) default, kept for GPU runs (first NCCL steps can be slow)."""

LINKED = ("num_classes", "input_shape", "num_tasks")
"""Model options the CLI takes from the DataModule."""


def check_linked_options(config: Namespace, model: BioplausModule) -> None:
    """A linked option (``LINKED``) set to something other than its default must be what
    the data gave the model: the DataModule decides, a disagreeing option is refused.

    Raises:
        SystemExit: ``--model.init_args.num_classes 5`` with ten-class data, say.
    """
    for key in LINKED:
        given, default = config.model.init_args.get(key), signature_default(type(model), key)
        normalise = (lambda v: tuple(v)) if key == "input_shape" else (lambda v: v)
        if given is None or normalise(given) in (normalise(default), normalise(getattr(model, key))):
            continue
        raise SystemExit(
            f"error: --model.init_args.{key} {given} disagrees with the data ({getattr(model, key)}): the "
            f"DataModule sets it; drop the option or choose matching data"
        )


def signature_default(cls: type, name: str) -> Any:
    """The default of ``cls``'s constructor argument ``name``, looked up along the MRO
    (through ``**kwargs``)."""
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(name) if "__init__" in vars(klass) else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def loaded_object(class_path: str) -> Any:
    """What ``class_path`` names among the modules already imported (importing nothing:
    a checkpoint's class path is not trusted to choose code to import)."""
    module_name, _, attribute = class_path.rpartition(".")
    return getattr(sys.modules.get(module_name), attribute, None)


def check_checkpoint_matches(path: str, saved: dict[str, Any], model: Namespace) -> None:
    """Refuse a checkpoint of another rule or network than the config's model; say which
    other hyper-parameters differ (the config's are kept).

    Raises:
        SystemExit: the rule or the network differs.
    """
    rule = saved.get("_class_path")
    if rule is not None and (loaded_object(rule) is None or loaded_object(rule) is not loaded_object(model.class_path)):
        raise SystemExit(
            f"error: checkpoint {path} was trained by {rule}, but the config's model is {model.class_path}: "
            "use that rule's config"
        )
    configured = _leaves(model.init_args.as_dict())
    recorded = _leaves({key: value for key, value in saved.items() if not key.startswith("_")})
    skipped = (*LINKED, "pretrained")
    differences = {
        key: (recorded[key], value)
        for key, value in configured.items()
        if key in recorded and key.split(".")[0] not in skipped and recorded[key] != value
    }
    network = {key: pair for key, pair in differences.items() if key.split(".")[0] == "network"}
    if network:
        listed = ", ".join(f"{key} {old!r} (config {new!r})" for key, (old, new) in network.items())
        raise SystemExit(f"error: checkpoint {path} was trained with another network: {listed}")
    if differences:
        listed = ", ".join(f"{key} (checkpoint {old!r}, config {new!r})" for key, (old, new) in differences.items())
        rank_zero_info(f"--ckpt_path {path}: keeping the config's {listed}")


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested hyper-parameters as ``{"a.b.c": leaf}``, tuples as lists (as the config holds them)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): list(value) if isinstance(value, tuple) else value}


def ddp_timeout(config: Namespace, trainer: Trainer) -> float:
    """Seconds of the DDP collective timeout: ``--ddp_timeout``, else ``CPU_DDP_TIMEOUT_S``
    on CPU and ``GPU_DDP_TIMEOUT_S`` on accelerators."""
    if config.get("ddp_timeout") is not None:
        return float(config.ddp_timeout)
    return CPU_DDP_TIMEOUT_S if trainer.strategy.root_device.type == "cpu" else GPU_DDP_TIMEOUT_S


def move_gradient_clip(config: Namespace) -> None:
    """``trainer.gradient_clip_val`` (norm) becomes ``model.init_args.gradient_clip_val``:
    Lightning clips only under automatic optimization, the rules clip their updates.

    Raises:
        SystemExit: the two disagree, or the trainer asks to clip by value.
    """
    clip = config.trainer.get("gradient_clip_val")
    if not clip:  # None, or 0: Lightning's "no clipping"
        config.trainer.gradient_clip_val = None
        return
    if config.trainer.get("gradient_clip_algorithm") not in (None, "norm"):
        raise SystemExit(
            "error: lit-bioplaus rules clip the update's global norm: drop --trainer.gradient_clip_algorithm"
        )
    own = config.model.init_args.get("gradient_clip_val")
    if own is not None and own != clip:
        raise SystemExit(
            f"error: --trainer.gradient_clip_val {clip} and --model.init_args.gradient_clip_val {own} disagree: "
            "give one (the module's is the one applied)"
        )
    config.model.init_args.gradient_clip_val = float(clip)
    config.trainer.gradient_clip_val = None


def check_config_files(args: Sequence[str]) -> None:
    """Exit with one clear line naming the file when a ``--config`` file is missing or
    is not valid YAML (rather than a parser error about an anonymous string)."""
    paths = [value for option, value in itertools.pairwise(args) if option in ("--config", "-c")]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in paths:
        try:
            yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise SystemExit(f"error: cannot read config file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise SystemExit(f"error: config file {path} is not valid YAML:\n{err}") from None


def main(args: Sequence[str] | None = None, run: bool = True) -> BioplausCLI:
    """Run the CLI on ``args`` (the command line when None); callable from tests."""
    check_config_files(sys.argv[1:] if args is None else args)
    return BioplausCLI(
        BioplausModule,
        VisionDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=None if args is None else list(args),
        run=run,
    )


def cli_main(args: Sequence[str] | None = None) -> None:
    """Console-script entry point ``lit-bioplaus``: a known failure (bad option value,
    missing or corrupt data, checkpoint or zoo file, divergence, out of memory, ...) is
    printed as one ``error:`` line, exit status 1 (SIGTERM: 143); set
    ``LIT_BIOPLAUS_DEBUG=1`` for the traceback. Anything else keeps its traceback.
    ``lit-bioplaus report ...`` is :mod:`lit_bioplaus.report`'s command line."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["report"]:
        from lit_bioplaus.report import main as report_main

        report_main(argv[1:], prog="lit-bioplaus report")
        return
    try:
        main(args)
    except SIGTERMException:
        raise SystemExit(SIGTERM_EXIT_STATUS) from None
    except Exception as err:
        message = None if os.environ.get("LIT_BIOPLAUS_DEBUG") else explain(err)
        if message is None:
            raise
        print(f"error: {message}\n(LIT_BIOPLAUS_DEBUG=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
