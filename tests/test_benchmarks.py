"""The benchmark scripts keep working (tiny runs), and the FLOP count of a training step
matches the analytic count for backprop and Counter-Current learning."""

from __future__ import annotations

import itertools
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ae_init
import flops
import guided_step_time
import resnet_throughput
import step_time

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


def test_resnet_throughput_benchmark_runs_both_rules():
    args = resnet_throughput.argparse.Namespace(
        width=2, size=8, batch_size=4, steps=1, warmup=1, accelerator="cpu", precision="32-true"
    )
    for cls in (resnet_throughput.GuidedBackProp, resnet_throughput.GuidedCounterHebb):
        assert resnet_throughput.images_per_second(cls, args) > 0
