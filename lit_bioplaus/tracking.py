"""Experiment tracking done right: W&B fails fast without credentials, and each run keeps
its own full config.

``check_wandb_ready`` runs before any W&B run is created: an online ``WandbLogger`` with
no API key would otherwise prompt, or fail deep inside ``wandb.init``, after the data and
model were built. ``RunConfigCallback`` writes the resolved CLI config into the run's own
folder (for W&B: the run's files, so it is uploaded with the run) instead of the shared
``save_dir`` that the next run overwrites, and logs it as the run's hyper-parameters.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from lit_bioplaus.io import atomic_write_text

OFFLINE_MODES = frozenset({"offline", "dryrun", "disabled"})
"""W&B modes that never contact a server."""

NO_API_KEY = (
    "error: W&B logging is online but no API key was found: run `wandb login`, set WANDB_API_KEY, "
    "or set WANDB_MODE=offline to keep the run on disk"
)


def check_wandb_ready(logger: object) -> None:
    """Exit with one line when a ``WandbLogger`` would go online without credentials.

    Call it once the trainer exists and before it runs: ``logger.experiment`` is never
    touched, so no W&B run is created. It never prompts, and without a key it never
    contacts a server (well under a second).

    Args:
        logger: the trainer's logger(s): a ``WandbLogger``, a list of loggers, or anything
            else (which passes).

    Raises:
        SystemExit: a ``WandbLogger`` goes online and no API key (``WANDB_API_KEY``, the
            key ``wandb login`` stored, an identity token file) is configured, or the key
            found is malformed.
    """
    loggers = logger if isinstance(logger, Iterable) else [logger]
    if not any(isinstance(item, WandbLogger) and goes_online(item) for item in loggers):
        return
    import wandb  # only with a WandbLogger: a second to import

    try:
        ready = has_wandb_credentials()
    except wandb.errors.AuthenticationError as err:
        raise SystemExit(f"error: W&B credentials are not usable: {err}") from None
    if not ready:
        raise SystemExit(NO_API_KEY)


def goes_online(logger: WandbLogger) -> bool:
    """Whether this logger's ``wandb.init`` will talk to a server, with wandb's precedence:
    the logger's ``offline`` flag, its ``mode`` / ``settings`` arguments, ``WANDB_MODE``,
    then the settings files (``wandb offline`` writes one). A logger that already has its
    run, or will reuse the active ``wandb.run``, creates nothing."""
    import wandb

    # Lightning keeps the constructor's choices only in private attributes.
    if logger._experiment is not None or wandb.run is not None or logger._offline:
        return False
    init = logger._wandb_init
    mode = init.get("mode") or _explicit_mode(init.get("settings")) or os.environ.get("WANDB_MODE")
    if mode is None:
        mode = wandb.setup().settings.mode  # the settings files, as wandb.init reads them
    return mode not in OFFLINE_MODES


def _explicit_mode(settings: Any) -> str | None:
    """The ``mode`` a ``settings`` argument of ``wandb.init`` sets, if it sets one (a
    ``wandb.Settings`` applies only the fields given to it)."""
    if isinstance(settings, Mapping):
        return settings.get("mode")
    return settings.mode if "mode" in getattr(settings, "model_fields_set", ()) else None


def has_wandb_credentials() -> bool:
    """Whether wandb has credentials for its server, looked up as ``wandb.init`` does but
    without prompting: ``wandb.login(prompt=False)`` (wandb >= 0.31), else the key that
    ``wandb.api`` reads from ``WANDB_API_KEY``, ``.netrc`` and the settings files.

    Without credentials no server is asked. With them, and unless ``WANDB_SILENT``,
    ``wandb.login`` asks the server whose key it is for its "logged in" line, as
    ``wandb.init`` would next.
    """
    import wandb

    if "prompt" in inspect.signature(wandb.login).parameters:
        return wandb.login(prompt=False, verify=False)
    return wandb.api.api_key is not None


class RunConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that gives each run its own config file and logs the config.

    The file goes to each logger's own folder: the W&B run's files folder as
    ``cli_config.yaml`` (uploaded with the run; W&B writes its own ``config.yaml`` there),
    the versioned ``log_dir`` of CSV / TensorBoard loggers, else ``trainer.log_dir`` as
    Lightning does. It is written atomically (unless ``multifile``
    or a remote folder: then by the parser, as Lightning does). The resolved config (model,
    data, trainer, seed_everything, ...) also becomes every logger's hyper-parameters
    unless ``Trainer(enable_autolog_hparams=False)``.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Save the config once per trainer, after the loggers made their runs."""
        if self.already_saved:
            return
        if self.save_to_log_dir:
            self.save_files(trainer)
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        # every rank agrees, so that later .setup() calls (fit, then test) do nothing
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_files(self, trainer: Trainer) -> None:
        """Write the config into each run folder on rank 0; unless ``overwrite``, refuse
        (on every rank) to replace a config that is already there."""
        log_dir = trainer.log_dir  # a collective call: every rank makes it
        assert log_dir is not None
        paths = config_paths(trainer, self.config_filename, log_dir)
        if not self.overwrite:
            existing = next((path for path in paths if get_filesystem(path).isfile(path)), None)
            existing = trainer.strategy.broadcast(existing)
            if existing:
                raise RuntimeError(
                    f"{type(self).__name__} expected {existing} to NOT exist. Aborting to avoid overwriting "
                    'the results of a previous run: delete it or set save_config_kwargs={"overwrite": True}.'
                )
        for path in paths:
            self.write(path)

    def write(self, path: str) -> None:
        """Write the config to ``path`` (atomically when it is a single local file)."""
        fs = get_filesystem(path)
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        if self.multifile or not isinstance(fs, LocalFileSystem):
            self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
        else:
            atomic_write_text(path, self.parser.dump(self.config, skip_none=False))

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved config, nested as in the file, as every logger's
        hyper-parameters (for W&B: ``run.config``)."""
        if not trainer.enable_autolog_hparams:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


def config_paths(trainer: Trainer, filename: str, log_dir: str) -> list[str]:
    """Where this run's config files go, on rank 0 (the other ranks write none and hold no
    W&B run), one per logger: ``cli_<filename>`` in a W&B run's files folder, ``filename``
    in a CSV / TensorBoard logger's versioned ``log_dir``; else in ``log_dir``."""
    if not trainer.is_global_zero:
        return []
    paths = [
        os.path.join(logger.experiment.dir, f"cli_{filename}")
        if isinstance(logger, WandbLogger)
        else os.path.join(logger.log_dir, filename)
        for logger in trainer.loggers
        if isinstance(logger, WandbLogger) or logger.log_dir
    ]
    return list(dict.fromkeys(paths)) or [os.path.join(log_dir, filename)]
