"""The NVML-based CUDA check Lightning turns on is turned off only where NVML cannot load: the
same ``torch.cuda.is_available()`` answer, and no failed library load per optimizer step."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
import torch

from lit_bioplaus import cuda_probe


def adam_steps_loading_libraries(steps: int = 3) -> int:
    """Libraries loaded (``ctypes.CDLL``, as PyTorch's NVML check loads one) during ``steps``
    Adam steps on a CPU tensor."""
    loads = 0
    real = ctypes.CDLL

    def counting(*args, **kwargs):
        nonlocal loads
        loads += 1
        return real(*args, **kwargs)

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    ctypes.CDLL = counting
    try:
        for _ in range(steps):
            weight.grad = torch.ones(3)
            optimizer.step()
    finally:
        ctypes.CDLL = real
    return loads


def test_without_nvml_the_check_is_turned_off_and_steps_load_nothing(monkeypatch):
    monkeypatch.setattr(cuda_probe, "NVML_LIBRARY", "libno-such-nvml.so.1")
    monkeypatch.setenv(cuda_probe.NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: ctypes.CDLL("libno-such-nvml.so.1"))
    monkeypatch.setattr(torch.cuda, "_cached_device_count", None)  # as before CUDA's initialisation
    monkeypatch.setattr(torch.cuda, "_initialized", False)
    answer_with_check = torch.cuda.is_available()
    assert adam_steps_loading_libraries() == 3  # one failed load per step while the check is on

    cuda_probe.skip_unloadable_nvml_check()

    assert os.environ[cuda_probe.NVML_CHECK] == "0"
    assert torch.cuda.is_available() == answer_with_check
    assert adam_steps_loading_libraries() == 0


def test_where_nvml_loads_the_check_stays_on(monkeypatch):
    monkeypatch.setattr(cuda_probe, "NVML_LIBRARY", "libc.so.6")  # any library that loads
    monkeypatch.setenv(cuda_probe.NVML_CHECK, "1")
    cuda_probe.skip_unloadable_nvml_check()
    assert os.environ[cuda_probe.NVML_CHECK] == "1"


@pytest.mark.parametrize("setting", [None, "1"])
def test_importing_the_library_applies_it_after_lightning(setting):
    environment = {k: v for k, v in os.environ.items() if k != cuda_probe.NVML_CHECK}
    if setting is not None:
        environment[cuda_probe.NVML_CHECK] = setting
    code = "import os, lit_bioplaus; print(os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'])"
    printed = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    assert printed == ("1" if cuda_probe.nvml_loads() else "0")
