"""Counter-Current learning: every local loss trains only the two maps that meet at its
point (the forward map below it and the feedback map above it), for MLPs, the pooled CNN
and the convolutional autoencoder."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lit_bioplaus.algorithms import CounterCurrent
from lit_bioplaus.algorithms.base import clip_gradient_sets_
from lit_bioplaus.nn import (
    MLP,
    ConvAutoencoder,
    PooledConvNet,
    TwoStreamActivation,
    TwoStreamFlatten,
    TwoStreamLinear,
    TwoStreamNetwork,
    TwoStreamResidualBlock,
)

NETWORKS = {
    "mlp": (lambda shape, classes: MLP(shape, classes, hidden=[9, 7], bias=True, weight_mode="asymmetric"), {}),
    "cnn": (lambda shape, classes: PooledConvNet(shape, classes, channels=[3, 4]), {}),
    "cnn_cosine_filtered": (
        lambda shape, classes: PooledConvNet(shape, classes, channels=[3, 4]),
        {"similarity": "cosine", "similarity_scale": 1.0, "anti_collapse_scale": 0.5, "target_filter": 0.1},
    ),
    "autoencoder": (lambda shape, classes: ConvAutoencoder(shape, channels=[3, 4]), {"task": "autoencoder"}),
}
INPUT_SHAPE, NUM_CLASSES, BATCH = (2, 8, 8), 5, 6


def make_model(name: str) -> CounterCurrent:
    network, options = NETWORKS[name]
    torch.manual_seed(0)
    return CounterCurrent(network=network, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, **options).double()


def owned_parameters(network: TwoStreamNetwork) -> list[set[int]]:
    """Per learning point ``k`` (the input, the output of each activation, the output):
    ids of the parameters that may produce its pair, i.e. the forward modules from the
    previous point up to it, and the feedback modules from the next point down to it
    (the weighted map above the point, with the feedback norm below that map)."""
    modules = list(network)
    acts = [i for i, module in enumerate(modules) if isinstance(module, TwoStreamActivation)]
    forward_reads = [0, *(i + 1 for i in acts), len(modules)]
    feedback_reads = [0, *acts, len(modules)]
    owners = []
    for k in range(len(forward_reads)):
        owned = []
        if k > 0:
            owned += [p for m in modules[forward_reads[k - 1] : forward_reads[k]] for p in m.up_parameters()]
        if k < len(forward_reads) - 1:
            owned += [p for m in modules[feedback_reads[k] : feedback_reads[k + 1]] for p in m.down_parameters()]
        owners.append({id(p) for p in owned})
    return owners


def batch(model: CounterCurrent) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(BATCH, *INPUT_SHAPE, dtype=torch.float64)
    return (x, x) if model.task == "autoencoder" else (x, torch.arange(BATCH) % NUM_CLASSES)


@pytest.mark.parametrize("name", NETWORKS)
def test_each_local_loss_trains_only_its_own_layers(name):
    model = make_model(name)
    losses, _ = model.local_losses(*batch(model))
    owners = owned_parameters(model.network)
    assert len(losses) == len(owners)
    params = list(model.parameters())
    touched_anywhere = set()
    for k, (loss, owned) in enumerate(zip(losses, owners, strict=True)):
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        touched = {id(p) for p, g in zip(params, grads, strict=True) if g is not None and g.abs().sum() > 0}
        assert touched == owned, f"loss {k} touches other layers' parameters or misses its own"
        assert owned, f"loss {k} trains nothing"
        touched_anywhere |= touched
    assert touched_anywhere == {id(p) for p in params}, "some parameter has no local loss"


def test_objective_sums_the_local_losses_and_warms_up():
    model = make_model("mlp")
    model.warmup_steps = 4
    # one batch done (two optimizer steps with an optimizer per network): factor 2 / 4
    model.trainer = type("TrainerStub", (), {"global_step": 2, "optimizers": [None, None]})()
    x, target = batch(model)
    losses, _ = model.local_losses(x, target)
    objective, loss, logits = model.training_objective(x, target)
    torch.testing.assert_close(objective, torch.stack(losses).sum())
    assert model.objective_scale() == 0.5
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, target))


def test_target_filter_drops_confident_samples():
    model = make_model("mlp")
    model.target_filter = 0.1
    logits = torch.tensor([[10.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]], dtype=torch.float64)
    keep = model.filter_mask(logits, torch.tensor([0, 0]))
    assert keep.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("merge_optimizers", [None, False])
def test_optimizers_split_forward_and_feedback_parameters(merge_optimizers):
    model = make_model("autoencoder")
    model.merge_optimizers = merge_optimizers
    groups = [group for optimizer in model.configure_optimizers()[0] for group in optimizer.param_groups]
    forward_ids = {id(p) for group in groups if group["network"] == "forward" for p in group["params"]}
    feedback_ids = {id(p) for group in groups if group["network"] == "feedback" for p in group["params"]}
    assert not forward_ids & feedback_ids
    assert forward_ids | feedback_ids == {id(p) for p in model.parameters()}


def test_gradient_centralization_removes_the_fan_in_mean():
    model = make_model("cnn")
    model.gradient_centralization = True
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    for optimizer in model.configure_optimizers()[0]:
        model._centralize_gradients(optimizer)
    for layer in model.network.weighted_layers():
        for param in (layer.weight, layer.feedback_weight):
            mean = param.grad.mean(dim=layer.fan_in_dims(param))
            torch.testing.assert_close(mean, torch.zeros_like(mean))


def test_shared_feedback_is_rejected():
    with pytest.raises(ValueError, match="asymmetric"):
        CounterCurrent(network=lambda s, c: MLP(s, c, hidden=[4], weight_mode="shared"), input_shape=(1, 2, 2))


AUTOENCODER_ON_DIGITS = [
    "fit", "--model", "lit_bioplaus.CounterCurrent", "--model.init_args.task", "autoencoder",
    "--model.init_args.network", "lit_bioplaus.nn.ConvAutoencoder",
    "--model.init_args.network.init_args.channels", "[4, 8]",
    "--data", "lit_bioplaus.data.Digits", "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "3", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


def test_autoencoder_logs_reconstruction_grid_to_csv_run(tmp_path):
    from lit_bioplaus.cli import main

    cli = main([*AUTOENCODER_ON_DIGITS, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                "--trainer.logger.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    run = Path(cli.trainer.logger.log_dir)
    assert {"val/mse", "test/mse"} <= set((run / "metrics.csv").read_text().splitlines()[0].split(","))
    assert (run / "reconstructions" / "epoch_0.png").is_file()


def test_autoencoder_logs_reconstruction_grid_to_wandb(tmp_path, monkeypatch):
    import wandb

    from lit_bioplaus.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    main([*AUTOENCODER_ON_DIGITS, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
          "--trainer.logger.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    wandb.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/files/media/images/val/reconstructions_*.png"))


def test_conv_autoencoder_upsample_init_scale_survives_counter_current():
    """Only the upsample-and-convolve maps are scaled, and CounterCurrent's re-initialisation
    of the feedback maps keeps the scale (the decoder's forward maps are feedback weights)."""

    def build(scale: float) -> TwoStreamNetwork:
        torch.manual_seed(0)
        network = lambda shape, classes: ConvAutoencoder(shape, channels=[8, 16], upsample_init_scale=scale)  # noqa: E731
        return CounterCurrent(network=network, task="autoencoder", input_shape=(1, 32, 32)).network

    for reference, layer in zip(build(1.0).weighted_layers(), build(1e-3).weighted_layers(), strict=True):
        torch.testing.assert_close(layer.weight, reference.weight)
        torch.testing.assert_close(layer.feedback_weight, 1e-3 * reference.feedback_weight)


@pytest.mark.parametrize(
    ("modules", "match"),
    [
        (lambda: [TwoStreamLinear(4, 3, weight_mode="asymmetric"), TwoStreamLinear(3, 2, weight_mode="asymmetric")],
         "exactly one activation"),
        (lambda: [TwoStreamActivation("elu"), TwoStreamLinear(4, 2, weight_mode="asymmetric")],
         "exactly one activation"),
        (lambda: [TwoStreamResidualBlock(2, input_size=(2, 2), weight_mode="asymmetric"), TwoStreamActivation("elu"),
                  TwoStreamFlatten((2, 2, 2)), TwoStreamLinear(8, 2, weight_mode="asymmetric")], "one map per stream"),
    ],
)  # fmt: skip
def test_networks_without_a_learning_point_per_layer_are_rejected(modules, match):
    with pytest.raises(ValueError, match=match):
        CounterCurrent(network=lambda s, c: TwoStreamNetwork(modules()), input_shape=(4,), num_classes=2)


# --- one optimizer or two -------------------------------------------------------------------
SGD, ADAM = partial(torch.optim.SGD, lr=0.1), partial(torch.optim.Adam, lr=0.1)
HALVING, SLOWER = (partial(torch.optim.lr_scheduler.ExponentialLR, gamma=gamma) for gamma in (0.5, 0.9))
HALVING_TOO = partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5)  # equal, not the same object
ONE_CYCLE = partial(torch.optim.lr_scheduler.OneCycleLR, total_steps=10, max_lr=0.1)


@pytest.mark.parametrize(
    ("options", "merged"),
    [
        ({"optimizer": SGD, "feedback_optimizer": partial(torch.optim.SGD, lr=1.0, momentum=0.9)}, True),
        ({"lr_scheduler": HALVING, "feedback_lr_scheduler": HALVING_TOO}, True),
        ({"optimizer": SGD, "feedback_optimizer": ADAM}, False),
        ({"optimizer": torch.optim.LBFGS, "feedback_optimizer": torch.optim.LBFGS}, False),
        ({"lr_scheduler": HALVING}, False),
        ({"lr_scheduler": HALVING, "feedback_lr_scheduler": SLOWER}, False),
        ({"merge_optimizers": False}, False),
        # settings the scheduler keeps in the groups, not in its state
        ({"lr_scheduler": ONE_CYCLE, "feedback_lr_scheduler": partial(ONE_CYCLE, max_lr=1.0)}, False),
        ({"lr_scheduler": ONE_CYCLE, "feedback_lr_scheduler": partial(ONE_CYCLE)}, True),
        # a per-group list argument: one entry fits each network's optimizer, not a merged one
        ({"lr_scheduler": partial(torch.optim.lr_scheduler.ReduceLROnPlateau, min_lr=[0.0])} | {
            "feedback_lr_scheduler": partial(torch.optim.lr_scheduler.ReduceLROnPlateau, min_lr=[0.0])}, False),
        ({"optimizer": partial(torch.optim.SGD, lr=0.1, fused=True)}, False),  # unscaled inside its step
    ],
    ids=["sgd_settings", "same_schedule", "sgd_adam", "lbfgs", "one_schedule", "two_schedules", "off",
         "one_cycle_max_lr", "one_cycle", "list_argument", "fused_one"],
)  # fmt: skip
def test_one_optimizer_holds_both_networks_where_they_can_share_it(options, merged):
    torch.manual_seed(0)
    network = partial(MLP, hidden=[9], weight_mode="asymmetric")
    model = CounterCurrent(network=network, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, **options)
    optimizers, schedulers = model.configure_optimizers()
    assert len(optimizers) == (1 if merged else 2) and model.merges_optimizers(*model.network_optimizers()) == merged
    groups = [group for optimizer in optimizers for group in optimizer.param_groups]
    assert [group["network"] for group in groups] == ["forward", "feedback"]
    assert groups[0]["params"] == list(model.network.up_parameters())
    assert groups[1]["params"] == list(model.network.down_parameters())
    if "feedback_optimizer" in options and merged:  # each group keeps its own factory's settings
        assert (groups[0]["lr"], groups[0]["momentum"], groups[1]["lr"], groups[1]["momentum"]) == (0.1, 0, 1.0, 0.9)
    expected_schedulers = [options.get("lr_scheduler"), options.get("feedback_lr_scheduler")][: len(optimizers)]
    assert [config["scheduler"].optimizer for config in schedulers] == [
        optimizer for optimizer, factory in zip(optimizers, expected_schedulers, strict=True) if factory is not None
    ]
    if not merged and "merge_optimizers" not in options:
        model.merge_optimizers = True
        with pytest.raises(ValueError, match="merge_optimizers is true, but"):
            model.configure_optimizers()


def test_clip_gradient_sets_clips_each_set_as_clip_grad_norm_does():
    torch.manual_seed(0)
    first = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    second = [torch.nn.Parameter(torch.randn(5))]
    unclipped = torch.nn.Parameter(torch.randn(2))  # under its limit: unchanged
    grads = [torch.randn_like(p) * 10 for p in [*first, *second]] + [torch.full((2,), 1e-3)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in [*first, *second, unclipped]]
    for p, c, g in zip([*first, *second, unclipped], copies, grads, strict=True):
        p.grad, c.grad = g.clone(), g.clone()
    clip_gradient_sets_([(first, 1.0), (second, 2.0), ([unclipped], 1.0)])
    for params, limit in ((copies[:2], 1.0), (copies[2:3], 2.0), (copies[3:], 1.0)):
        torch.nn.utils.clip_grad_norm_(params, limit)
    for p, c in zip([*first, *second, unclipped], copies, strict=True):
        assert torch.equal(p.grad, c.grad)
    assert torch.equal(unclipped.grad, grads[-1])
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in first])) == pytest.approx(1.0, rel=1e-5)


def test_clip_gradient_sets_skips_missing_gradients_and_mixed_dtypes_clip_per_set():
    float32, float64 = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    no_grad = torch.nn.Parameter(torch.zeros(4))
    float32.grad, float64.grad = torch.full((3,), 4.0), torch.full((2,), 3.0, dtype=torch.float64)
    clip_gradient_sets_([([float32, no_grad], 1.0), ([float64], 100.0), ([no_grad], 1.0)])
    torch.testing.assert_close(float32.grad, torch.full((3,), 4.0) / (48**0.5 + 1e-6))
    assert torch.equal(float64.grad, torch.full((2,), 3.0, dtype=torch.float64)) and no_grad.grad is None


def test_warm_up_counts_batches_with_one_optimizer():
    model = make_model("mlp")
    model.warmup_steps = 4
    model.trainer = type("TrainerStub", (), {"global_step": 1, "optimizers": [None]})()  # one batch done
    assert model.objective_scale() == 0.5


def scaled_trainer() -> L.Trainer:
    """A trainer with a loss scaler, as 16-mixed on a GPU (Lightning refuses 16-mixed on a CPU)."""
    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    return L.Trainer(accelerator="cpu", plugins=[scaled], max_steps=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)  # fmt: skip


@pytest.mark.parametrize("merge_optimizers", [None, False])
def test_a_loss_scaler_needs_one_optimizer(merge_optimizers):
    """Lightning updates the scale after each optimizer's step: with two, the feedback update
    would be unscaled with the scale the forward step left."""
    model = make_model("mlp").float()
    model.merge_optimizers = merge_optimizers
    samples = TensorDataset(torch.randn(BATCH, *INPUT_SHAPE), torch.arange(BATCH) % NUM_CLASSES)
    data = DataLoader(samples, batch_size=BATCH)
    trainer = scaled_trainer()
    if merge_optimizers is False:
        with pytest.raises(ValueError, match=r"16-mixed needs one optimizer .* but merge_optimizers is false"):
            trainer.fit(model, data)
    else:
        trainer.fit(model, data)
        assert len(trainer.optimizers) == 1 and trainer.global_step == 1
