"""Counter-Hebb learning: with symmetric weights the update IS the backprop gradient."""

from __future__ import annotations

import pytest
import torch

from lit_bioplaus.algorithms import CounterHebb, DirectFeedbackAlignment, FeedbackAlignment
from lit_bioplaus.nn import (
    MLP,
    ConvNet,
    PooledConvNet,
    TwoStreamActivation,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLinear,
    TwoStreamMirror,
    TwoStreamNetwork,
    TwoStreamResidualBlock,
)
from tests.test_nn import old_layout_state_dict

NETWORKS = {
    "mlp": (lambda mode: MLP((1, 6, 6), 5, hidden=[17, 11], weight_mode=mode), (1, 6, 6), 5),
    "cnn_stride2_pad": (
        lambda mode: ConvNet(
            (2, 9, 9), 4, channels=[5, 6], kernel_size=3, stride=2, padding=1, hidden=[7], weight_mode=mode
        ),
        (2, 9, 9),
        4,
    ),
    "residual": (
        lambda mode: TwoStreamNetwork(
            [
                TwoStreamConv2d(2, 4, 3, stride=2, padding=1, weight_mode=mode, input_size=(9, 9)),
                TwoStreamActivation("relu"),
                TwoStreamResidualBlock(4, input_size=(5, 5), weight_mode=mode),
                TwoStreamActivation("relu"),
                TwoStreamResidualBlock(4, input_size=(5, 5), weight_mode=mode),
                TwoStreamActivation("relu"),
                TwoStreamFlatten((4, 5, 5)),
                TwoStreamLinear(100, 3, weight_mode=mode),
            ]
        ),
        (2, 9, 9),
        3,
    ),
    "pooled_cnn": (
        lambda mode: PooledConvNet((2, 8, 7), 4, channels=[3, 5], activation="relu", bias=True, weight_mode=mode),
        (2, 8, 7),
        4,
    ),
    "cnn_k5_pad2": (
        lambda mode: ConvNet((1, 12, 11), 3, channels=[4], kernel_size=5, stride=2, padding=2, weight_mode=mode),
        (1, 12, 11),
        3,
    ),
}


def make_counter_hebb(network, mode: str, loss: str = "ce", cls=CounterHebb) -> CounterHebb:
    build, shape, classes = NETWORKS[network]
    model = cls(network=lambda _shape, _classes: build(mode), input_shape=shape, num_classes=classes, loss=loss)
    return model.double()


def counter_hebb_update(model: CounterHebb, x, target) -> dict[str, torch.Tensor]:
    model.zero_grad()
    trace = model.up_pass(x)
    _, delta = model.output_error(trace.logits, target)
    model.lateral_energy(trace, model.down_pass(trace, delta)).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def backprop_gradient(model: CounterHebb, x, target) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.loss(model(x), target).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def batch(model: CounterHebb, n: int = 8):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *model.input_shape, generator=generator, dtype=torch.float64)
    target = torch.randint(0, model.num_classes, (n,), generator=generator)
    return x, target


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("mode", ["shared", "symmetric"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_update_equals_backprop_gradient(network, mode, loss):
    torch.manual_seed(0)
    model = make_counter_hebb(network, mode, loss)
    x, target = batch(model)
    update = counter_hebb_update(model, x, target)
    gradient = backprop_gradient(model, x, target)
    for name, grad in gradient.items():
        torch.testing.assert_close(update[name], grad, rtol=0, atol=1e-10, msg=name)
    if mode == "symmetric":
        for name, grad in gradient.items():
            if name.endswith(".weight"):
                feedback = name.replace(".weight", "._feedback_weight")
                torch.testing.assert_close(update[feedback], grad, rtol=0, atol=1e-10, msg=feedback)


@pytest.mark.parametrize("network", NETWORKS)
def test_asymmetric_weights_get_the_same_update(network):
    torch.manual_seed(0)
    model = make_counter_hebb(network, "asymmetric")
    update = counter_hebb_update(model, *batch(model))
    for layer_name, layer in model.network.named_modules():
        if hasattr(layer, "_feedback_weight") and layer._feedback_weight is not None:
            prefix = f"network.{layer_name}"
            torch.testing.assert_close(
                update[f"{prefix}._feedback_weight"], update[f"{prefix}.weight"], rtol=0, atol=1e-12
            )


def test_feedback_alignment_never_changes_td_weights():
    torch.manual_seed(0)
    model = make_counter_hebb("mlp", "fixed", cls=FeedbackAlignment)
    before = {k: v.clone() for k, v in model.state_dict().items() if "_feedback_weight" in k}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        counter_hebb_update(model, *batch(model))
        optimizer.step()
    after = model.state_dict()
    assert before
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert not any("_feedback_weight" in name for name, _ in model.named_parameters())


def test_feedback_alignment_requires_fixed_feedback():
    with pytest.raises(ValueError, match="fixed"):
        make_counter_hebb("mlp", "symmetric", cls=FeedbackAlignment)


def test_direct_feedback_alignment_refuses_residual_blocks_and_batch_norm():
    with pytest.raises(ValueError, match="residual blocks and batch-norm"):
        make_counter_hebb("residual", "shared", cls=DirectFeedbackAlignment)
    with pytest.raises(ValueError, match="residual blocks and batch-norm"):
        DirectFeedbackAlignment(
            network=lambda s, c: MLP(s, c, hidden=[5], batch_norm=True), input_shape=(4,), num_classes=2
        )


@pytest.mark.parametrize("network", [name for name in NETWORKS if name != "residual"])
def test_direct_feedback_alignment_projects_the_output_error(network):
    torch.manual_seed(0)
    model = make_counter_hebb(network, "shared", cls=DirectFeedbackAlignment)
    x, target = batch(model)
    trace = model.up_pass(x)
    _, delta = model.output_error(trace.logits, target)
    deltas = model.down_pass(trace, delta).deltas
    torch.testing.assert_close(deltas[-1], delta)
    modules = list(model.network)
    hidden = [i for i, module in enumerate(modules[:-1]) if module.has_weights]
    assert hidden and [i for i, _ in model._hidden_points()] == hidden
    for index, point in model._hidden_points():
        # B_l e lands on the hidden layer h_l (after the activation and any pooling) and
        # reaches the weighted module's output as backprop through the modules between.
        projected = (delta @ getattr(model, f"direct_feedback_{index}")).reshape(trace.outputs[point].shape)
        z = trace.outputs[index].clone().requires_grad_(True)
        h = z
        for module in modules[index + 1 : point + 1]:
            h = module.up(h)
        (expected,) = torch.autograd.grad(h, z, projected)
        torch.testing.assert_close(deltas[index], expected)
    update = counter_hebb_update(model, x, target)
    assert set(update) == {name for name, p in model.named_parameters()}
    assert not any("direct_feedback" in name for name, _ in model.named_parameters())


def test_alignment_metrics():
    torch.manual_seed(0)
    symmetric = make_counter_hebb("mlp", "symmetric").alignment_metrics()
    asymmetric = make_counter_hebb("mlp", "asymmetric").alignment_metrics()
    assert set(symmetric) == {f"align/{kind}_{i}" for kind in ("angle", "norm_ratio") for i in range(3)}
    for i in range(3):
        assert symmetric[f"align/angle_{i}"] == pytest.approx(0.0, abs=1e-3)
        assert symmetric[f"align/norm_ratio_{i}"] == pytest.approx(1.0)
        assert 70 < asymmetric[f"align/angle_{i}"] < 110  # independent weights: nearly orthogonal
    assert make_counter_hebb("mlp", "shared").alignment_metrics() == {}


def test_counter_hebb_refuses_modules_without_a_top_down_pass():
    def with_mirror(shape, classes):
        return TwoStreamNetwork(
            [TwoStreamFlatten((4,)), TwoStreamMirror(TwoStreamLinear(3, 4, weight_mode="asymmetric")),
             TwoStreamActivation("relu"), TwoStreamLinear(3, 2)]
        )  # fmt: skip

    with pytest.raises(ValueError, match="TwoStreamMirror"):
        CounterHebb(network=with_mirror, input_shape=(4,), num_classes=2)


def test_direct_feedback_alignment_loads_checkpoints_of_the_old_layout():
    """Old checkpoints index the maps among themselves (``network.layers.{i}``) and name
    the DFA matrices ``direct_feedback_{i}`` alike."""
    torch.manual_seed(0)
    model = make_counter_hebb("mlp", "shared", cls=DirectFeedbackAlignment)
    maps = [index for index, module in enumerate(model.network) if not isinstance(module, TwoStreamActivation)]
    state = {f"network.{key}": value for key, value in old_layout_state_dict(model.network).items()}
    for old_index, index in enumerate(maps):
        if hasattr(model, f"direct_feedback_{index}"):
            state[f"direct_feedback_{old_index}"] = getattr(model, f"direct_feedback_{index}").clone()
    torch.manual_seed(1)
    fresh = make_counter_hebb("mlp", "shared", cls=DirectFeedbackAlignment)
    fresh.load_state_dict(state)
    for (key, value), reference in zip(fresh.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(value, reference), key
