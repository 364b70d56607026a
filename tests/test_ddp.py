"""Multi-process correctness on CPU (gloo): DDP ranks stay identical, two processes
with batch B each train exactly like one process with batch 2B, and the logged
evaluation losses are the mean over the ranks."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from lit_bioplaus.cli import main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def launch(directory: Path, args: list[str]) -> None:
    """Run ``python -m lit_bioplaus ARGS`` in ``directory``, in a subprocess (DDP
    re-executes the command)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "-m", "lit_bioplaus", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=directory)
    assert result.returncode == 0, result.stderr[-3000:]


def fit(directory: Path, config: str, devices: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Run ``fit`` and return each rank's final parameters. The DataModule's sampler
    makes the global batches match."""
    directory.mkdir()
    args = [
        "fit", "--config", str(ROOT / "configs" / config),
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.max_steps", str(STEPS), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--trainer.default_root_dir", str(directory),
        "--data.init_args.batch_size", str(batch_size),
        "--trainer.callbacks+=rank_snapshot.SaveRankParameters",
        f"--trainer.callbacks.directory={directory}",
    ]  # fmt: skip
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    launch(directory, args)
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


# One config per ``_evaluate`` (BioplausModule's, GuidedLearning's), with a validation split.
EVALUATION_CONFIGS = {"quickstart.yaml": [], "quickstart_guided.yaml": ["--data.init_args.train_size", "1294"]}


@pytest.mark.parametrize("config", EVALUATION_CONFIGS)
def test_ddp_evaluation_loss_is_the_mean_over_ranks(config, tmp_path):
    """``val/loss`` and ``test/loss`` logged by two DDP processes are the mean of the two
    ranks' losses (each rank's shard, as Lightning's ``DistributedSampler`` deals it,
    evaluated in one process from the same checkpoint), not rank 0's own."""
    data = [
        "--config",
        str(ROOT / "configs" / config),
        *EVALUATION_CONFIGS[config],
        "--data.init_args.batch_size",
        "16",
    ]
    launch(tmp_path, [
        "fit", *data, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ])  # fmt: skip
    checkpoint = sorted(tmp_path.glob("**/*.ckpt"))[0]  # after the one epoch (best and last are the same)
    (metrics,) = tmp_path.glob("**/metrics.csv")
    with metrics.open() as file:
        logged = {key: float(value) for row in csv.DictReader(file) for key, value in row.items() if value}
    cli = main([*data, "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar",
                "false", "--trainer.default_root_dir", str(tmp_path)], run=False)  # fmt: skip
    datamodule = cli.datamodule
    datamodule.setup()
    for stage, evaluate in (("val", cli.trainer.validate), ("test", cli.trainer.test)):
        split = getattr(datamodule, f"{stage}_set")
        losses = []
        for rank in range(2):
            shard = torch.tensor(list(DistributedSampler(split, num_replicas=2, rank=rank, shuffle=False)))
            setattr(datamodule, f"{stage}_set", split.subset(shard))
            (results,) = evaluate(cli.model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
            losses.append(results[f"{stage}/loss"])
        assert abs(losses[0] - losses[1]) > 1e-4, "equal shard losses: rank 0's alone would pass"
        assert logged[f"{stage}/loss"] == pytest.approx(sum(losses) / 2, rel=0, abs=1e-6)
