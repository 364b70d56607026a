"""The benchmark scripts keep working (tiny runs), the FLOP count of a training step
matches the analytic count for backprop and Counter-Current learning, and the step-time
benchmark's plain Counter-Current loop (written as the official code writes it) makes
``CounterCurrent``'s update."""

from __future__ import annotations

import itertools
import math
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ae_init
import flops
import guided_step_time
import step_time
import throughput

from lit_bioplaus.algorithms import BackProp, CounterCurrent
from lit_bioplaus.data import Digits


def test_step_timer_runs_every_rule():
    for name in step_time.ALGORITHMS:
        assert step_time.lightning_ms_per_step(step_time.make_model(name), 8, 2, 1, False) > 0
    assert step_time.plain_ms_per_step(8, 2, 1) > 0


@pytest.mark.parametrize("algorithm", ["BP", "CCL"])
def test_flops_of_a_training_step(algorithm):
    hidden, batch, classes = [16, 16], 4, flops.NUM_CLASSES
    model = flops.make_model(algorithm, (1, 2, 4), hidden)
    widths = [8, *hidden, classes]
    forward = sum(2 * a * b for a, b in itertools.pairwise(widths))  # per sample
    if algorithm == "BP":  # forward + weight gradients + activity gradients above the input
        expected = 3 * forward - 2 * widths[0] * widths[1]
    else:  # forward + weight gradients; feedback net on the C one-hots (+ its weight
        # gradients) once per batch; the N x C similarity products A B^T at every layer
        # input, with the gradients of B and of A (except the input image's)
        feedback = 2 * forward * classes / batch
        similarity = sum(2 * classes * d * (3 if k else 2) for k, d in enumerate(widths[:-1]))
        expected = 2 * forward + feedback + similarity
    assert flops.mflops_per_sample(model, batch) * 1e6 == pytest.approx(expected)


@pytest.mark.parametrize("rule", [CounterCurrent, BackProp])
def test_autoencoder_init_benchmark_runs(rule):
    datamodule = Digits(batch_size=16, eval_batch_size=64)
    model = ae_init.make_model(rule, datamodule.input_shape, 1e-3, 0.2, channels=(4, 4))
    before, after = ae_init.validation_mse(model, datamodule, steps=30)
    assert math.isfinite(before) and after < before


def test_guided_step_time_benchmark_runs():
    for cls in (guided_step_time.GuidedCounterHebb, guided_step_time.PassOneOnEveryRow):
        assert guided_step_time.ms_per_step(cls, channels=2, batch_size=4, steps=2, warmup=1) > 0


def test_pass_one_on_every_row_gives_the_same_gates():
    model = guided_step_time.PassOneOnEveryRow(
        network=partial(guided_step_time.MultiMNISTNet, channels=2), num_tasks=2, input_shape=(1, 28, 28)
    )
    task = torch.tensor([1, 0, 1])
    every_row = model.sample_gates(task)
    once = guided_step_time.GuidedCounterHebb.sample_gates(model, task)
    assert every_row.keys() == once.keys()
    for index in once:
        assert torch.equal(every_row[index], once[index])


TINY = ["--steps", "1", "--warmup", "1", "--repeats", "1"]


def test_ccl_table_runs_every_column(capsys):
    step_time.main(["--tables", "ccl", "--batch-sizes", "8", *TINY])
    out = capsys.readouterr().out
    assert "threads=1" in out and "round robin" in out
    rows = [line for line in out.splitlines() if line.startswith("| CCL") or line.startswith("| CH")]
    assert [row.split(" | ")[0] for row in rows] == ["| CCL", "| CH sym", "| CH asym"]
    assert rows[0].count(" - ") == 0 and rows[1].count(" - ") == 4  # plain CCL, two optimizers: CCL rows only
    assert "Lightning floor ms (f)" in out and all(row.count("|") == 13 for row in rows)


def test_lightning_floor_is_a_fit_of_a_module_that_does_nothing():
    module = step_time.EmptyModule()
    loader = step_time.make_loader(4, 12)
    assert step_time.lightning_ms_per_step(module, 4, 2, 1, progress_bar=False, loader=loader) > 0
    assert torch.equal(module.weight, torch.zeros(1))
    assert step_time.loop_ms_per_step(loader, 2, 1) > 0
    assert math.isfinite(step_time.lightning_floor_ms(4, 2, 1))


@pytest.mark.parametrize("rule", ["CCL", "CH asym"])
def test_profile_splits_the_lightning_step(rule, capsys):
    profile = step_time.profile_lightning_steps(step_time.make_model(rule), 8, 3, 1)
    assert set(profile) == {*step_time.PROFILE_CATEGORIES, "fit loop", "total"}
    assert all(profile[category] > 0 for category in ("objective", "backward", "optimizer", "metrics", "data"))
    assert 0 <= profile["fit loop"] < profile["total"]  # every category is timed inside the step
    if rule == "CCL":
        assert profile["clipping"] > 0
        step_time.main(["--profile", rule, "--batch-sizes", "8", "--steps", "2", "--warmup", "1"])
        out = capsys.readouterr().out
        assert "| rule: training_objective" in out and "a - b =" in out


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_plain_ccl_step_makes_the_update_of_counter_current(dtype, tolerance):
    """One step of the official-style loop from the module's initial weights gives the
    module's weights after its own first (Lightning) step: an independent formulation.
    The inputs are scaled so that both networks' updates are clipped (to norm 1)."""
    torch.manual_seed(0)
    model = step_time.make_ccl_model().to(dtype)
    plain = step_time.PlainCCLMLP.copy_of(model)
    x = 8 * torch.randn(32, *step_time.INPUT_SHAPE, dtype=dtype)
    y = torch.randint(0, step_time.NUM_CLASSES, (32,))
    before = [p.detach().clone() for p in plain.parameters()]
    loss = step_time.plain_ccl_step(plain, *step_time.plain_ccl_optimizers(plain), x, y)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=32))
    assert loss.item() > model.last_local_losses[-1].item() > 0  # the summed losses, their top CE
    layers = model.network.weighted_layers()
    ours = [layer.weight for layer in layers] + [layer.feedback_weight.T for layer in layers]
    theirs = list(plain.parameters())  # the forward layers, then the backward layers
    assert len(ours) == len(theirs) == len(before) == 12
    for network in (slice(0, 6), slice(6, 12)):
        updates = [after - start for after, start in zip(theirs[network], before[network], strict=True)]
        assert torch.stack([update.norm() for update in updates]).norm().item() == pytest.approx(1, abs=1e-5)
    for mine, official, start in zip(ours, theirs, before, strict=True):
        assert mine.dtype == official.dtype == dtype
        torch.testing.assert_close(mine, official, rtol=0, atol=tolerance)
        torch.testing.assert_close(mine - start, official - start, rtol=0, atol=tolerance)


def test_throughput_benchmark_runs_every_recipe(capsys):
    tiny_networks = "--conv-channels 2 2 --cnn5-channels 2 2 2 2 2 --width 2 --resnet-size 16"
    batches = "--conv-batch-sizes 4 --cnn5-batch-sizes 4 --resnet-batch-sizes 4"
    throughput.main([*TINY, *tiny_networks.split(), *batches.split()])
    out = capsys.readouterr().out
    assert "threads=1" in out and "1 timed steps" in out and "round robin" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0][2:] for row in rows] == ["BP", "CH sym", "CH asym", "FA", "DFA", "BP", "CCL", "BP twin", "guided CH"]
    assert all(float(row[3]) > 0 for row in rows)


def test_throughput_compile_flag_reaches_the_modules():
    args = throughput.parser().parse_args(["--compile", "--width", "2", "--resnet-size", "16"])
    throughput.check_compile_option()  # this lit_bioplaus has the option
    for row in throughput.rows_of(args):
        assert row.build().hparams["compile"] is True

    class WithoutCompile:
        def __init__(self, network=None) -> None: ...

    with pytest.raises(SystemExit, match="--compile"):
        throughput.check_compile_option([WithoutCompile])


def test_throughput_lists_a_failing_row_and_measures_the_others(capsys, monkeypatch):
    measure = throughput.ms_per_step

    def fail_for_guided_ch(row, args):
        if row.rule == "guided CH":
            raise RuntimeError("no kernel\nsecond line")
        return measure(row, args)

    monkeypatch.setattr(throughput, "ms_per_step", fail_for_guided_ch)
    throughput.main([*TINY, "--repeats", "2", "--recipes", "resnet", "--width", "2", "--resnet-size", "16"])
    out = capsys.readouterr().out
    assert "| guided CH | guided ResNet18 w2, 16x16, 40 tasks | 100 | failed | - |" in out
    assert "failed: guided CH on guided ResNet18 w2, 16x16, 40 tasks, batch 100: RuntimeError: no kernel\n" in out
    bp_twin = next(line for line in out.splitlines() if line.startswith("| BP twin"))
    assert float(bp_twin.split(" | ")[3]) > 0
