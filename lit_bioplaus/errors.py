"""Known failures as one line for the command line, instead of a traceback through
jsonargparse, Lightning and PyTorch (``lit_bioplaus.cli.cli_main`` prints it).

``explain`` looks through the exception and its causes, innermost first, for a failure it
knows: the library's own validation (``ValueError`` raised by its code), its data / zoo /
divergence errors, Lightning's configuration errors, running out of memory, a DDP peer that
stopped answering, and checkpoints that cannot be read or do not fit the model. Anything
else (a bug) returns None and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lit_bioplaus.data import DatasetCorruptError, DatasetNotFoundError
from lit_bioplaus.fault_tolerance import DivergenceError
from lit_bioplaus.registry import ZooIntegrityError

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARY_ERRORS = (DivergenceError, DatasetCorruptError, DatasetNotFoundError, ZooIntegrityError)
"""Raised by the library with a message written for the user, wherever they surface."""


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it (``raise ... from``, or the exception being handled)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def frames(traceback: TracebackType | None) -> Iterator[TracebackType]:
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next


def raised_in(error: BaseException, folder: Path) -> bool:
    """Whether the innermost frame of ``error``'s traceback is in a file under ``folder``."""
    innermost = None
    for innermost in frames(error.__traceback__):  # noqa: B007
        pass
    return innermost is not None and Path(innermost.tb_frame.f_code.co_filename).resolve().is_relative_to(folder)


def checkpoint_path(error: BaseException) -> str | None:
    """The path a Lightning ``load_checkpoint`` frame of ``error``'s traceback was reading."""
    for frame in frames(error.__traceback__):
        if frame.tb_frame.f_code.co_name == "load_checkpoint" and "path" in frame.tb_frame.f_locals:
            return str(frame.tb_frame.f_locals["path"])
    return None


def in_function(error: BaseException, module_suffix: str, name: str) -> bool:
    """Whether ``error`` went through function ``name`` of a file ending in ``module_suffix``."""
    return any(
        frame.tb_frame.f_code.co_name == name and frame.tb_frame.f_code.co_filename.endswith(module_suffix)
        for frame in frames(error.__traceback__)
    )


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def explain(error: BaseException) -> str | None:
    """One or two lines saying what failed and what to do, or None for an unknown failure."""
    chain = list(causes(error))
    for cause in reversed(chain):  # innermost first: the most specific message
        if isinstance(cause, torch.OutOfMemoryError):
            return f"out of memory ({first_line(cause)}): lower --data.batch_size (and --data.eval_batch_size)"
        if isinstance(cause, LIBRARY_ERRORS):
            return str(cause)
        if isinstance(cause, MisconfigurationException):
            return first_line(cause)
        if isinstance(cause, RuntimeError) and "Timed out waiting" in str(cause):
            return (
                f"a DDP process stopped answering ({first_line(cause)}): it crashed, hangs or is far slower "
                "than the others (see its output); --ddp_timeout sets how long the others wait"
            )
        if isinstance(cause, ValueError) and raised_in(cause, PACKAGE_DIR) and str(cause).strip():
            return str(cause)  # the library's own validation (a ``raise ValueError`` in its code)
    for cause in chain:
        path = checkpoint_path(cause)
        if path is not None and in_function(cause, os_path("torch/serialization.py"), "load"):
            return (
                f"cannot read checkpoint {path}: corrupt, truncated or not a PyTorch checkpoint ({first_line(cause)})"
            )
        if in_function(cause, os_path("torch/nn/modules/module.py"), "load_state_dict"):
            where = f" {path}" if path else ""
            return f"the checkpoint{where} does not fit this model (another network or rule?): {first_line(cause)}"
    return None


def os_path(posix: str) -> str:
    """``posix`` with this platform's separators (for matching code file names)."""
    return str(Path(posix))
