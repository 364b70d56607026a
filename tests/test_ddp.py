"""Multi-process correctness on CPU (gloo): DDP ranks stay identical, two processes
with batch B each train exactly like one process with batch 2B (with batch-norm: like
each process's shard normalised with its own statistics, the updates averaged), and the
logged evaluation losses are the mean over the ranks."""

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


def fit(
    directory: Path, config: str, devices: int, batch_size: int, *extra: str, steps: int = STEPS
) -> list[dict[str, torch.Tensor]]:
    """Run ``fit`` for ``steps`` steps (``extra``: more options) and return each rank's
    final parameters (``SaveRankParameters`` also leaves the initial ones and the buffers
    in ``directory``). The DataModule's sampler makes the global batches match."""
    directory.mkdir()
    args = [
        "fit", "--config", str(ROOT / "configs" / config),
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
        "--trainer.max_steps", str(steps), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--trainer.default_root_dir", str(directory),
        "--data.init_args.batch_size", str(batch_size),
        "--trainer.callbacks+=rank_snapshot.SaveRankParameters",
        f"--trainer.callbacks.directory={directory}",
        *extra,
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


# A batch-normed guided network (MultiMNISTNet: BU and TD batch-norm at every gated layer),
# trained with SGD and momentum: Adam divides each update by its RMS, so a parameter whose
# exact gradient is zero (the bias of a map just before a BU batch-norm: the norm removes any
# constant shift) takes steps of about lr from the float rounding of its zero gradient, which
# differs with the thread count of the process; SGD keeps such rounding at its own size.
BATCH_NORM = ["--model.init_args.network.init_args.batch_norm", "true"]
SGD = ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.05",
       "--model.init_args.optimizer.momentum", "0.9"]  # fmt: skip
BN_STEPS, SHARD = 6, 16  # within epoch 0 (719 samples per rank)


def set_buffers(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(values[name])


def replay(cli, initial: dict[str, torch.Tensor], steps: list[list[list[int]]]):
    """Train ``cli.model`` in this process from ``initial`` (parameters and buffers): each
    step is a list of shards (indices into the training split), each shard's update is the
    rule's objective on that shard alone (batch-norm with the shard's batch statistics, its
    tasks those the DataModule draws for epoch 0), the updates are averaged (DDP's gradient
    all-reduce) and the optimizer steps once. Shard ``r`` keeps its own buffers across steps
    (rank ``r``'s running statistics). Returns the final parameters and each shard's buffers."""
    model, datamodule = cli.model, cli.datamodule
    model.load_state_dict(initial, strict=True)
    model.train()
    optimizer = model.configure_optimizers()
    buffers = [dict(initial) for _ in steps[0]]
    for shards in steps:
        updates = []
        for rank, shard in enumerate(shards):
            set_buffers(model, buffers[rank])
            images, labels, rows = datamodule.train_set.__getitems__(shard)
            x, target = model.split_batch((images, labels, datamodule.tasks(rows, 0)))
            model.zero_grad(set_to_none=True)
            objective, _, _ = model.training_objective(x, target)
            objective.backward()
            updates.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
            buffers[rank] = {name: b.detach().clone() for name, b in model.named_buffers()}
        for name, p in model.named_parameters():
            if name in updates[0]:
                p.grad = sum(update[name] for update in updates) / len(updates)
        optimizer.step()
    return {name: p.detach().clone() for name, p in model.named_parameters()}, buffers


def test_two_ddp_processes_with_batch_norm_each_normalise_their_own_shard(tmp_path):
    """Two DDP processes with batch B on a batch-normed ``GuidedCounterHebb`` train exactly
    like this replay: per step, the global batch of 2B (one process's batch) dealt as the
    ``DistributedSampler`` deals it (rank r takes its samples r, r + 2, ...), each shard's
    update computed with its own batch statistics (BU batch-norm over the shard's B samples;
    the TD batch-norm of pass 1 on the T task rows weighted by the shard's task counts), the
    two updates averaged, one optimizer step. Parameters stay identical on the two ranks.
    (The TD norms' affine parameters get no update from the rule and are frozen: DDP would
    otherwise stop on unused parameters.)

    Running statistics (BU and TD norms, and ``num_batches_tracked``) are rank-local: each
    rank's are the running average over its own shards only, never averaged or broadcast.
    DDP would broadcast rank 0's buffers at the start of every forward, but with manual
    optimization Lightning runs the whole step (objective, ``manual_backward``, optimizer
    step) inside DDP's forward and then clears ``require_backward_grad_sync``, which makes
    DDP's post-forward set ``require_forward_param_sync = False``; so no buffer broadcast
    happens after the first step (where the buffers are still equal), nor later in
    validation. So a checkpoint holds rank 0's statistics, and in DDP validation each rank
    normalises with its own. The gradient all-reduce is DDP's reducer (``manual_backward``),
    in float32: parameters and buffers agree to 1e-5.

    Negative checks: the ranks' running statistics differ, and one batch-norm pass over the
    whole global batch (one process with batch 2B) ends clearly elsewhere."""
    extra = [*BATCH_NORM, *SGD]
    directory = tmp_path / "ddp"
    rank0, rank1 = fit(directory, "quickstart_guided.yaml", 2, SHARD, *extra, steps=BN_STEPS)
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    initial_buffers = load_file(directory / "rank0_initial_buffers.safetensors")
    initial = {**load_file(directory / "rank0_initial.safetensors"), **initial_buffers}
    buffers = [load_file(directory / f"rank{rank}_buffers.safetensors") for rank in range(2)]
    cli = main([
        "--config", str(ROOT / "configs" / "quickstart_guided.yaml"), *extra,
        "--data.init_args.batch_size", str(SHARD), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "replay"),
    ], run=False)  # fmt: skip
    datamodule = cli.datamodule
    datamodule.setup("fit")
    sampler = DistributedSampler(datamodule.train_set, 1, 0, shuffle=datamodule.shuffle, seed=datamodule.seed)
    sampler.set_epoch(0)
    order = list(sampler)  # one process's epoch 0
    batches = [order[2 * SHARD * step : 2 * SHARD * (step + 1)] for step in range(BN_STEPS)]
    shards = [[batch[rank::2] for rank in range(2)] for batch in batches]
    for rank in range(2):  # the DDP sampler of rank r deals exactly these shards
        ranks_sampler = DistributedSampler(
            datamodule.train_set, 2, rank, shuffle=datamodule.shuffle, seed=datamodule.seed
        )
        ranks_sampler.set_epoch(0)
        assert list(ranks_sampler)[: SHARD * BN_STEPS] == [i for step in shards for i in step[rank]]

    parameters, replayed = replay(cli, initial, shards)
    assert parameters.keys() == rank0.keys()
    for name, value in parameters.items():
        torch.testing.assert_close(rank0[name], value, rtol=0, atol=1e-5, msg=name)
    norms = [name.removesuffix(".running_mean") for name in initial_buffers if name.endswith(".running_mean")]
    streams = {cli.model.get_submodule(name.removesuffix(".norm")).stream for name in norms}
    assert streams == {"up", "down"}
    for rank in range(2):
        assert buffers[rank].keys() == replayed[rank].keys() == initial_buffers.keys()
        for name, value in replayed[rank].items():
            torch.testing.assert_close(buffers[rank][name], value, rtol=0, atol=1e-5, msg=f"rank {rank}: {name}")
        for norm in norms:  # every norm, BU and TD, updated its statistics at every step
            assert int(buffers[rank][f"{norm}.num_batches_tracked"]) == BN_STEPS, norm
            assert not torch.allclose(buffers[rank][f"{norm}.running_mean"], initial[f"{norm}.running_mean"]), norm
            assert not torch.allclose(buffers[rank][f"{norm}.running_var"], initial[f"{norm}.running_var"]), norm
    for norm in norms:  # rank-local: each rank's from its own shards (TD norms: its task counts)
        statistics = [f"{norm}.running_mean", f"{norm}.running_var"]
        difference = max((buffers[0][name] - buffers[1][name]).abs().max() for name in statistics)
        assert difference > 5e-5, norm

    one_pass, _ = replay(cli, initial, [[batch] for batch in batches])
    assert max((one_pass[name] - rank0[name]).abs().max() for name in rank0) > 1e-3


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
