"""Files written so that a crash or a full disk never leaves a half-written file where a
good one was: a temporary file in the same folder, flushed to disk, then renamed over."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, fsync the result, rename it to ``path`` and fsync
    the folder (so the rename survives a power cut). The temporary file
    (``.<name>.<random>.tmp`` beside ``path``) gets the usual permissions (``0o666`` less
    the umask) and is removed if anything fails; only a kill can leave one behind
    (``stale_temporaries`` finds those)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path)
    try:
        write(temporary)
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files ``atomic_write`` left beside ``path`` when a process was killed."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _create_temporary(path: Path) -> Path:
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies
            return temporary
        except FileExistsError:
            continue


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system that cannot open folders
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_save_file(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file``, atomically."""
    return atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``Path.write_text``, atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text))
