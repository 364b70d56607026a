"""The NVML-based CUDA check Lightning turns on is turned off only where NVML cannot load and a
device is visible: the same ``torch.cuda.is_available()`` answer, and no failed library load
per optimizer step.

The first test plays a CPU machine with PyPI's CUDA build of torch on any machine: NVML fails
to load (a counting stand-in for torch's loader) and the CUDA runtime counts no device, so no
CUDA context is ever created."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch

from lit_bioplaus import cuda_probe


@pytest.fixture
def machine_without_nvml(monkeypatch) -> list[int]:
    """The process as on a CPU machine without NVML; returns the list whose length is the
    number of NVML loads torch attempted."""
    loads: list[int] = []

    def unloadable() -> int:
        loads.append(1)
        raise OSError(f"{cuda_probe.NVML_LIBRARY}: cannot open shared object file")

    monkeypatch.setattr(cuda_probe, "NVML_LIBRARY", "libno-such-nvml.so.1")
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", unloadable)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", lambda: 0, raising=False)
    monkeypatch.setattr(torch.cuda, "_cached_device_count", None)  # as before CUDA's initialisation
    monkeypatch.setattr(torch.cuda, "_initialized", False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(cuda_probe.NVML_CHECK, "1")
    return loads


def adam_steps(steps: int = 3) -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    for _ in range(steps):
        weight.grad = torch.ones(3)
        optimizer.step()


def test_the_library_is_the_one_torch_loads():
    assert cuda_probe.NVML_LIBRARY in inspect.getsource(torch.cuda._raw_device_count_nvml)


def test_without_nvml_the_check_is_turned_off_and_steps_load_nothing(machine_without_nvml):
    adam_steps(3)
    assert len(machine_without_nvml) == 3  # one failed load per step while the check is on
    assert torch.cuda.is_available() is False

    cuda_probe.skip_unloadable_nvml_check()

    assert os.environ[cuda_probe.NVML_CHECK] == "0"
    loads_before = len(machine_without_nvml)
    adam_steps(3)
    assert torch.cuda.is_available() is False
    assert len(machine_without_nvml) == loads_before


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_with_every_device_hidden_the_check_stays_on(machine_without_nvml, monkeypatch, hidden):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)  # the check answers 0 without asking anyone
    cuda_probe.skip_unloadable_nvml_check()
    assert os.environ[cuda_probe.NVML_CHECK] == "1"
    assert torch.cuda.is_available() is False and not machine_without_nvml


def test_where_nvml_loads_the_check_stays_on(monkeypatch):
    monkeypatch.setattr(cuda_probe, "NVML_LIBRARY", "libc.so.6")  # any library that loads
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(cuda_probe.NVML_CHECK, "1")
    cuda_probe.skip_unloadable_nvml_check()
    assert os.environ[cuda_probe.NVML_CHECK] == "1"


def test_importing_the_library_applies_it_after_lightning():
    environment = {k: v for k, v in os.environ.items() if k not in (cuda_probe.NVML_CHECK, "CUDA_VISIBLE_DEVICES")}
    code = "import os, lit_bioplaus; print(os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'])"
    printed = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    assert printed == ("1" if cuda_probe.nvml_loads() else "0")
