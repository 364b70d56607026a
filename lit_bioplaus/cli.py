"""The ``lit-bioplaus`` command line: LightningCLI with fit / validate / test / predict.

Shapes are never repeated in configs: ``data.num_classes`` and ``data.input_shape``
are linked into the model when both are instantiated. ``--zoo NAME`` starts any
subcommand from a model-zoo entry: its recipe config plus its verified weights.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_bioplaus.algorithms import BioplausModule
from lit_bioplaus.data import VisionDataModule
from lit_bioplaus.prediction import PredictionWriter


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
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: evaluate the test split after training and print the metrics table",
        )

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


def expand_zoo_argument(args: Sequence[str]) -> list[str]:
    """Rewrite ``[SUBCOMMAND] --zoo NAME ...`` into
    ``[SUBCOMMAND] --config RECIPE ... --model.init_args.pretrained NAME``.

    The recipe config comes first so that any later argument still overrides it.
    """
    args = list(args)
    if "--zoo" not in args:
        return args
    at = args.index("--zoo")
    if at + 1 >= len(args):
        raise SystemExit("error: --zoo needs the name of a model-zoo entry (see lit_bioplaus.zoo.list_models())")
    from lit_bioplaus.zoo import get_weights

    name = args[at + 1]
    try:
        recipe = get_weights(name).recipe_path
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    rest = args[:at] + args[at + 2 :]
    split = 1 if rest and not rest[0].startswith("-") else 0
    return [*rest[:split], "--config", str(recipe), *rest[split:], "--model.init_args.pretrained", name]


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
    """Run the CLI on ``args`` (``sys.argv[1:]`` when None); callable from tests."""
    args = expand_zoo_argument(sys.argv[1:] if args is None else args)
    check_config_files(args)
    return BioplausCLI(
        BioplausModule,
        VisionDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def cli_main() -> None:
    """Console-script entry point ``lit-bioplaus``."""
    main()
