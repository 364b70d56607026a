"""``compile: true`` (torch.compile of the training objective) gives the same update as eager
execution: parameters after two real training steps (one full and one smaller batch, so the
objective is compiled and recompiled for the new size) agree to float32 rounding."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_bioplaus import BackProp, CounterCurrent, CounterHebb
from lit_bioplaus.data import InMemoryImageDataset, collate
from lit_bioplaus.nn import MLP

SHAPE, CLASSES = (1, 8, 8), 10
RULES = {
    "BP": (BackProp, "shared", {}),
    "CH asym": (CounterHebb, "asymmetric", {}),
    "CCL": (CounterCurrent, "asymmetric", {"warmup_steps": 3, "gradient_clip_val": 0.5}),
}


def make_model(rule: str, compile: bool) -> L.LightningModule:
    cls, weight_mode, options = RULES[rule]
    torch.manual_seed(0)
    activation = "elu" if cls is CounterCurrent else "relu"
    return cls(
        network=lambda shape, classes: MLP(
            shape, classes, hidden=[32, 16], weight_mode=weight_mode, activation=activation
        ),
        num_classes=CLASSES,
        input_shape=SHAPE,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        compile=compile,
        **options,
    )


def train(model: L.LightningModule) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (28, *SHAPE), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, CLASSES, (28,), generator=generator)
    dataset = InMemoryImageDataset(images, labels, mean=(0.5,), std=(0.25,))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, DataLoader(dataset, batch_size=16, collate_fn=collate))  # batches of 16 and 12
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("rule", RULES)
def test_compiled_objective_gives_the_eager_update(rule):
    eager, compiled = make_model(rule, compile=False), make_model(rule, compile=True)
    initial = {name: p.detach().clone() for name, p in eager.named_parameters()}
    expected = train(eager)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    actual = train(compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "nothing was compiled"
    assert any(not torch.equal(initial[name], expected[name]) for name in initial), "nothing trained"
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=name)
