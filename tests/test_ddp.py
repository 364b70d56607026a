"""Multi-process correctness on CPU (gloo): DDP ranks stay identical, and two processes
with batch B each train exactly like one process with batch 2B."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def fit(directory: Path, config: str, devices: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Run ``fit`` in a subprocess (DDP re-executes the command) and return each rank's
    final parameters. The DataModule's sampler makes the global batches match."""
    directory.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "tests")}
    command = [
        sys.executable, "-m", "lit_bioplaus", "fit", "--config", str(ROOT / "configs" / config),
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.max_steps", str(STEPS), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--trainer.default_root_dir", str(directory),
        "--data.init_args.batch_size", str(batch_size),
        "--trainer.callbacks+=rank_snapshot.SaveRankParameters",
        f"--trainer.callbacks.directory={directory}",
    ]  # fmt: skip
    if devices > 1:
        command += ["--trainer.strategy", "ddp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=directory)
    assert result.returncode == 0, result.stderr[-3000:]
    initial = load_file(directory / "rank0_initial.safetensors")
    final = [load_file(directory / f"rank{rank}.safetensors") for rank in range(devices)]
    assert any(not torch.equal(initial[name], final[0][name]) for name in initial), "parameters never changed"
    return final


CONFIGS = ["quickstart.yaml", "quickstart_ch.yaml", "quickstart_ccl.yaml", "quickstart_guided.yaml"]


@pytest.mark.parametrize("config", CONFIGS)
def test_two_ddp_processes_equal_one_process_with_the_global_batch(config, tmp_path):
    rank0, rank1 = fit(tmp_path / "ddp", config, devices=2, batch_size=16)
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    (single,) = fit(tmp_path / "single", config, devices=1, batch_size=32)
    for name in rank0:
        torch.testing.assert_close(rank0[name], single[name], rtol=0, atol=1e-5, msg=name)
