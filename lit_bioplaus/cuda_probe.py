"""Keep ``torch.cuda.is_available()`` cheap on machines without NVML.

Importing Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, so that asking whether CUDA is
available asks NVML (``libnvidia-ml``) and does not initialise CUDA in a process that may fork
later. PyTorch caches the answer only once CUDA is initialised, which never happens in a CPU
run; and every optimizer that checks for CUDA-graph capture (Adam, AdamW, Adamax, NAdam, RAdam,
RMSprop, Rprop, ASGD, Adadelta; not SGD) asks at every ``step``. On a machine without NVML (a
CPU machine with PyPI's CUDA build of torch) each ask tries to ``dlopen`` the missing library,
fails, and falls back to the CUDA runtime's device count: 0.105 ms of a 0.33 ms fused Adam
step on the 784-500-10 MLP, one CPU thread.

With NVML missing, the NVML-based check has nothing to offer while a device is visible:
PyTorch falls back to the CUDA runtime's count, the one it uses without the variable.
``skip_unloadable_nvml_check`` then sets the variable to ``"0"`` and the answer comes from that
count directly: the same answer without the failed ``dlopen``. Where NVML loads, or where
``CUDA_VISIBLE_DEVICES`` hides every device (the NVML-based check then answers without asking
anything, and stays fork-safe), nothing changes. Importing ``pytorch_lightning`` afterwards
sets the variable to ``"1"`` again.
"""

from __future__ import annotations

import ctypes
import os

import torch

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML_LIBRARY = "libnvidia-ml.so.1"
"""The library PyTorch's NVML-based check loads (``torch.cuda._raw_device_count_nvml``)."""


def nvml_loads() -> bool:
    """Whether this process can load NVML, as PyTorch's NVML-based CUDA check would."""
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


def devices_visible() -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES`` (unset: every device) leaves a device to look for, as
    PyTorch parses it: only then does its NVML-based check load NVML."""
    parse = getattr(torch.cuda, "_parse_visible_devices", None)
    return True if parse is None else bool(parse())


def skip_unloadable_nvml_check() -> None:
    """Turn PyTorch's NVML-based CUDA availability check off (``PYTORCH_NVML_BASED_CUDA_CHECK=0``)
    where it is on, a device is visible and NVML cannot be loaded: the same answer, without a
    failed ``dlopen`` per optimizer step."""
    if os.environ.get(NVML_CHECK) == "1" and devices_visible() and not nvml_loads():
        os.environ[NVML_CHECK] = "0"
