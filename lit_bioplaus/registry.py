"""The model zoo's registry: the manifest, the ``Weights`` entries, and the verified
weights files, fetched on first use into a user cache.

This module sits below the learning rules (they load ``pretrained`` weights through it)
and imports none of them; ``lit_bioplaus.zoo`` builds modules on top of it and
``lit_bioplaus.publish`` adds entries.

Where things come from:

* **The manifest** (``manifest.json``: one entry per name) and the recipe configs ship
  inside the package (``importlib.resources``); ``$LIT_BIOPLAUS_ZOO``, when set, is a
  folder with a manifest and weights of its own (a private zoo) that replaces it.
* **A weights file** is looked up, in order, in ``$LIT_BIOPLAUS_ZOO``, in the source
  checkout's ``zoo/`` folder (when running from one), and in the cache
  (``$LIT_BIOPLAUS_CACHE``, else ``$XDG_CACHE_HOME/lit_bioplaus/zoo``, else
  ``~/.cache/lit_bioplaus/zoo``); when none holds it, it is downloaded from the entry's
  ``url`` (or ``$LIT_BIOPLAUS_ZOO_URL/<file>``) into the cache. Its sha256 is checked
  before anything is loaded: a local file that does not match is refused, a cached one
  is discarded and fetched again, and a download is renamed into the cache only once it
  matches (a failed download leaves nothing behind).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from safetensors.torch import load_file
from torch import Tensor

from lit_bioplaus.data.transforms import ImagePreprocessing
from lit_bioplaus.io import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The source checkout's root, when the package runs from one."""

DEFAULT_URL = "https://github.com/lit-bioplaus/lit-bioplaus/releases/download/zoo-v1"
"""Where ``publish`` says an entry's file will be served (``url`` of new entries)."""

DOWNLOAD_TIMEOUT_S = 60.0


class ZooIntegrityError(RuntimeError):
    """A zoo file is missing, or its sha256 differs from the manifest."""


class ZooDownloadError(ZooIntegrityError):
    """A zoo file could not be downloaded."""


def resource_root() -> Path:
    """The folder holding the packaged ``manifest.json`` and ``configs/``."""
    return Path(str(resources.files("lit_bioplaus") / "resources"))


def private_zoo_dir() -> Path | None:
    """``$LIT_BIOPLAUS_ZOO``, a folder with its own manifest and weights, if set."""
    folder = os.environ.get("LIT_BIOPLAUS_ZOO")
    return Path(folder).expanduser() if folder else None


def checkout_zoo_dir() -> Path | None:
    """The source checkout's ``zoo/`` folder, when the package runs from a checkout."""
    folder = PROJECT_ROOT / "zoo"
    return folder if (PROJECT_ROOT / "pyproject.toml").is_file() and folder.is_dir() else None


def zoo_dir() -> Path:
    """The folder ``publish`` writes to: ``$LIT_BIOPLAUS_ZOO``, else the checkout's ``zoo/``."""
    folder = private_zoo_dir() or checkout_zoo_dir()
    if folder is None:
        raise RuntimeError("no zoo folder to publish to: set LIT_BIOPLAUS_ZOO or run from a source checkout")
    return folder


def cache_dir() -> Path:
    """Where downloaded weights are kept (see the module docstring)."""
    if "LIT_BIOPLAUS_CACHE" in os.environ:
        return Path(os.environ["LIT_BIOPLAUS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lit_bioplaus" / "zoo"


def manifest_path() -> Path:
    """The manifest in use: the private zoo's, else the packaged one."""
    private = private_zoo_dir()
    return private / "manifest.json" if private is not None else resource_root() / "manifest.json"


def read_manifest() -> dict[str, dict[str, Any]]:
    """The manifest in use, ``{}`` if there is none.

    Raises:
        ZooIntegrityError: it is not a JSON object (damaged, truncated).
    """
    path = manifest_path()
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZooIntegrityError(f"the zoo manifest {path} is damaged ({err}): restore it") from None
    if not isinstance(manifest, dict):
        raise ZooIntegrityError(f"the zoo manifest {path} is not a JSON object: restore it")
    return manifest


@dataclass(frozen=True)
class Weights:
    """One zoo entry: a weights file and the metadata of the run that produced it, in
    the spirit of torchvision's ``WeightsEnum`` members.

    ``input_shape``, ``num_classes``, ``num_tasks``, ``categories`` (class names) and
    ``preprocessing`` (``ImagePreprocessing``'s arguments) are those of the DataModule
    that trained and tested the model; ``transforms()`` rebuilds that DataModule's
    preprocessing for raw images.
    """

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
    url: str = ""
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    num_tasks: int = 1
    categories: tuple[str, ...] = field(default=(), repr=False)
    preprocessing: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_manifest(cls, name: str, entry: dict[str, Any]) -> Weights:
        """The entry ``name`` of the manifest.

        Raises:
            ZooIntegrityError: unknown or missing fields, or a file name that is not a plain
                name in the zoo folder (no ``/``, ``..``).
        """
        entry = dict(entry)
        for key in ("input_shape", "categories"):
            if key in entry:
                entry[key] = tuple(entry[key])
        try:
            weights = cls(name=name, **entry)
        except TypeError as err:
            raise ZooIntegrityError(f"zoo entry {name!r} of {manifest_path()} is malformed: {err}") from None
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.safetensors", weights.file) or ".." in weights.file:
            raise ZooIntegrityError(f"zoo entry {name!r} names the file {weights.file!r}: not a plain file name")
        return weights

    def to_manifest(self) -> dict[str, Any]:
        """The manifest entry (JSON types, without the name, which is its key)."""
        entry = {key: getattr(self, key) for key in self.__dataclass_fields__ if key != "name"}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in entry.items()}

    @property
    def recipe_path(self) -> Path:
        """The recipe config: packaged (``configs/...``), else a path as written."""
        packaged = resource_root() / self.recipe
        return packaged if packaged.is_file() else Path(self.recipe)

    @property
    def download_url(self) -> str:
        """``$LIT_BIOPLAUS_ZOO_URL/<file>`` when set, else the entry's ``url``."""
        base = os.environ.get("LIT_BIOPLAUS_ZOO_URL")
        return f"{base.rstrip('/')}/{self.file}" if base else self.url

    def transforms(self) -> ImagePreprocessing:
        """The preprocessing the model was trained and tested with, for raw images in
        ``[0, 1]`` (or uint8): ``(N, C, H, W) -> (N, *input_shape)``."""
        if not self.preprocessing:
            raise ValueError(f"zoo entry {self.name!r} records no preprocessing")
        return ImagePreprocessing(**self.preprocessing)

    @property
    def path(self) -> Path:
        """The verified local weights file, fetched into the cache first if needed."""
        return self.fetch()

    def fetch(self) -> Path:
        """The weights file, after its sha256 check (see the module docstring).

        Raises:
            ZooIntegrityError: a local file does not match, or no copy can be found.
            ZooDownloadError: the download failed (nothing is left in the cache).
        """
        for folder in (private_zoo_dir(), checkout_zoo_dir()):
            if folder is not None and (folder / self.file).is_file():
                return self._verified(folder / self.file)
        cached = cache_dir() / self.file
        if cached.is_file():
            if sha256_of(cached) == self.sha256:
                return cached
            rank_zero_warn(f"zoo entry {self.name!r}: the cached {cached} is corrupted; downloading it again")
            cached.unlink(missing_ok=True)  # another DDP process may have been first
        if not self.download_url:
            raise ZooIntegrityError(f"zoo entry {self.name!r}: weights file {self.file} is missing and has no URL")
        return self._download(cached)

    def _verified(self, path: Path) -> Path:
        digest = sha256_of(path)
        if digest != self.sha256:
            raise ZooIntegrityError(
                f"zoo entry {self.name!r}: {path} has sha256 {digest}, but the manifest says {self.sha256}. "
                "The file was modified or corrupted; refusing to load it."
            )
        return path

    def _download(self, target: Path) -> Path:
        url = self.download_url
        rank_zero_info(f"Downloading zoo entry {self.name!r} from {url} to {target}")

        def write(temporary: Path) -> None:
            digest = hashlib.sha256()
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(temporary, "wb") as f:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        f.write(block)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
                reason = getattr(err, "reason", err)
                raise ZooDownloadError(
                    f"zoo entry {self.name!r}: could not download {url} ({reason}); put {self.file} in "
                    "$LIT_BIOPLAUS_ZOO or the cache, or point $LIT_BIOPLAUS_ZOO_URL at a copy"
                ) from None
            if digest.hexdigest() != self.sha256:
                raise ZooIntegrityError(
                    f"zoo entry {self.name!r}: the file downloaded from {url} has sha256 {digest.hexdigest()}, "
                    f"but the manifest says {self.sha256}; it was not kept"
                )

        return atomic_write(target, write)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_models() -> list[str]:
    """Names of all zoo entries, sorted."""
    return sorted(read_manifest())


def get_weights(name: str) -> Weights:
    """The zoo entry called ``name`` (``ValueError`` listing the entries if unknown)."""
    manifest = read_manifest()
    if name not in manifest:
        raise ValueError(f"unknown zoo entry {name!r}; available: {', '.join(sorted(manifest)) or 'none'}")
    return Weights.from_manifest(name, manifest[name])


def load_state_dict(name: str) -> dict[str, Tensor]:
    """The verified state dict of zoo entry ``name`` (safetensors, no pickle)."""
    return load_file(get_weights(name).fetch())
