"""The per-step bookkeeping of every rule: ``TrainingStatistics`` gives what ``MeanMetric``
(sample-weighted loss), ``MulticlassAccuracy`` (micro) and ``MeanSquaredError`` give over
batches of unequal size; ``use_fast_kernels`` switches optimizers to torch's fused (else foreach)
kernels and leaves the update as it was."""

from __future__ import annotations

import pytest
import torch
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from lit_bioplaus.algorithms.base import use_fast_kernels
from lit_bioplaus.algorithms.metrics import TrainingStatistics

BATCHES = (7, 32, 3)


def test_classification_statistics_match_torchmetrics():
    generator = torch.Generator().manual_seed(0)
    statistics, mean, accuracy = TrainingStatistics(), MeanMetric(), MulticlassAccuracy(5, average="micro")
    for size in BATCHES:
        loss = torch.rand((), generator=generator)
        scores, target = torch.randn(size, 5, generator=generator), torch.randint(0, 5, (size,), generator=generator)
        statistics.update(loss, scores, target)
        mean.update(loss, weight=size)
        accuracy.update(scores, target)
    loss, acc = statistics.compute()
    torch.testing.assert_close(loss, mean.compute())
    torch.testing.assert_close(acc, accuracy.compute())
    statistics.reset()
    assert statistics.compute()[0].isnan()


def test_autoencoder_statistics_are_the_mean_squared_error():
    generator = torch.Generator().manual_seed(1)
    statistics, mse = TrainingStatistics("autoencoder"), MeanSquaredError()
    for size in BATCHES:
        outputs, images = (
            torch.randn(size, 1, 4, 4, generator=generator),
            torch.randn(size, 1, 4, 4, generator=generator),
        )
        statistics.update(torch.nn.functional.mse_loss(outputs, images), outputs, images)
        mse.update(outputs, images)
    loss, metric = statistics.compute()
    torch.testing.assert_close(metric, mse.compute())
    torch.testing.assert_close(loss, mse.compute())  # equal sizes per sample: the same mean


@pytest.mark.parametrize(
    ("optimizer", "kernel"),
    [
        (torch.optim.SGD, "fused"),
        (torch.optim.Adam, "fused"),
        (torch.optim.AdamW, "fused"),
        (torch.optim.RMSprop, "foreach"),
    ],
)
def test_fast_kernels_give_the_for_loop_update(optimizer, kernel):
    torch.manual_seed(0)
    weights = [torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    copies = [w.detach().clone().requires_grad_(True) for w in weights]
    loop, fast = optimizer(weights, lr=0.1), use_fast_kernels(optimizer(copies, lr=0.1))
    assert fast.param_groups[0][kernel] is True and loop.param_groups[0][kernel] is None
    for _ in range(3):
        for params, opt in ((weights, loop), (copies, fast)):
            opt.zero_grad()
            (params[0].sin().sum() * params[1].cos().sum()).backward()
            opt.step()
    for expected, actual in zip(weights, copies, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("setting", [{"foreach": False}, {"fused": False}, {"foreach": True}])
def test_a_kernel_chosen_in_the_config_is_kept(setting):
    optimizer = use_fast_kernels(torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=0.1, **setting))
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in setting} == setting and not (group["fused"] and group["foreach"])


def test_counts_survive_a_cast_to_half_precision():
    """``bf16-true`` casts the module with ``.to(torch.bfloat16)``: counts stay exact."""
    statistics = TrainingStatistics().to(torch.bfloat16)
    scores, target = torch.eye(5)[torch.arange(128) % 5], torch.arange(128) % 5
    for _ in range(600):
        statistics.update(torch.tensor(0.5, dtype=torch.bfloat16), scores.bfloat16(), target)
    loss, acc = statistics.compute()
    assert int(statistics.samples) == 600 * 128 and acc == 1.0 and loss == 0.5


def test_clipping_refuses_an_optimizer_that_unscales_inside_its_step_under_16_mixed():
    import lightning as L
    from lightning.pytorch.plugins.precision import MixedPrecision
    from torch.utils.data import DataLoader, TensorDataset

    from lit_bioplaus import BackProp
    from lit_bioplaus.nn import MLP

    model = BackProp(
        network=lambda shape, classes: MLP(shape, classes, hidden=[4]),
        num_classes=3,
        input_shape=(1, 2, 2),
        optimizer=lambda params: torch.optim.Adam(params, fused=True),
        gradient_clip_val=1.0,
    )
    data = DataLoader(TensorDataset(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])), batch_size=4)
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))  # as 16-mixed on a GPU
    trainer = L.Trainer(
        accelerator="cpu", plugins=[scaled], max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="unscales its gradients inside its step"):
        trainer.fit(model, data)
