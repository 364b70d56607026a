"""Two-stream layers and architectures: shapes, weight modes, adjointness."""

import pytest
import torch

from lit_bioplaus.nn import (
    MLP,
    WEIGHT_MODES,
    ConvAutoencoder,
    ConvNet,
    MultiMNISTNet,
    PooledConvNet,
    TwoStreamActivation,
    TwoStreamBatchNorm,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLinear,
    TwoStreamMaxPool2d,
    TwoStreamMirror,
    TwoStreamNetwork,
    TwoStreamResidualBlock,
)

CONV_GEOMETRIES = [
    # (kernel, stride, padding, dilation, input size)
    (3, 1, 1, 1, (8, 8)),
    (3, 2, 1, 1, (9, 9)),
    (3, 2, 1, 1, (8, 7)),
    (5, 2, 2, 1, (12, 12)),
    (2, 2, 0, 1, (7, 7)),
    (3, 3, 0, 2, (11, 10)),
]


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_linear_streams_have_mirrored_shapes(mode):
    layer = TwoStreamLinear(7, 5, weight_mode=mode)
    assert layer.up(torch.randn(4, 7)).shape == (4, 5)
    assert layer.down(torch.randn(4, 5)).shape == (4, 7)


@pytest.mark.parametrize("mode", WEIGHT_MODES)
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "size"), CONV_GEOMETRIES)
def test_conv_down_map_restores_input_shape(mode, kernel, stride, padding, dilation, size):
    layer = TwoStreamConv2d(3, 4, kernel, stride, padding, dilation, weight_mode=mode, input_size=size)
    y = layer.up(torch.randn(2, 3, *size))
    assert y.shape == (2, 4, *layer.output_size)
    assert layer.down(y).shape == (2, 3, *size)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "size"), CONV_GEOMETRIES)
def test_shared_conv_down_is_adjoint_of_up(kernel, stride, padding, dilation, size):
    torch.manual_seed(0)
    layer = TwoStreamConv2d(3, 4, kernel, stride, padding, dilation, bias=False, input_size=size).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    y = torch.randn(2, 4, *layer.output_size, dtype=torch.float64)
    torch.testing.assert_close((layer.up(x) * y).sum(), (x * layer.down(y)).sum(), rtol=1e-12, atol=1e-12)


def test_shared_mode_uses_the_forward_parameter():
    layer = TwoStreamLinear(6, 3, weight_mode="shared")
    assert layer.feedback_weight is layer.weight
    assert {name for name, _ in layer.named_parameters()} == {"weight", "bias"}
    with torch.no_grad():
        layer.weight.add_(1.0)
    torch.testing.assert_close(layer.feedback_weight, layer.weight)


def test_symmetric_mode_starts_equal_but_separate():
    layer = TwoStreamLinear(6, 3, weight_mode="symmetric")
    torch.testing.assert_close(layer.feedback_weight, layer.weight)
    assert layer.feedback_weight is not layer.weight
    assert layer.feedback_weight.requires_grad
    assert layer.feedback_bias is not None and layer.feedback_bias.shape == (6,)


def test_asymmetric_mode_is_independent():
    layer = TwoStreamLinear(60, 30, weight_mode="asymmetric")
    assert not torch.allclose(layer.feedback_weight, layer.weight)
    assert layer.feedback_weight.requires_grad


@pytest.mark.parametrize("mode", ["asymmetric", "fixed"])
def test_official_feedback_init_is_kaiming_uniform_on_the_td_layout(mode):
    """The official code's TD weights: ``U(-sqrt(6 / fan), sqrt(6 / fan))`` with ``fan`` the
    fan-in of its TD layout, ``(in, out)`` for linear (fan = out), the forward layout for
    conv (fan = C_in / groups * k * k)."""
    torch.manual_seed(0)
    net = MultiMNISTNet(channels=8, weight_mode=mode, feedback_init="official")
    fans = {0: 1 * 25, 2: 1 * 4, 4: 8 * 25, 6: 1 * 9, 9: 50, 11: 10}  # module -> TD fan-in
    for index, fan in fans.items():
        layer = net[index]
        bound, forward_bound = (6 / fan) ** 0.5, 1 / layer.weight[0].numel() ** 0.5
        values = layer.feedback_weight.detach().flatten()
        assert values.abs().max() <= bound
        assert values.abs().max() > 0.8 * bound  # the full range is used
        torch.testing.assert_close(values.std(), torch.tensor(bound / 3**0.5), rtol=0.25, atol=0)
        assert layer.weight.abs().max() <= forward_bound  # the BU weights keep PyTorch's init
    assert net[9].feedback_weight.abs().max() > 2.5 * net[9].weight.abs().max()  # sqrt(6 / 50) vs 1 / sqrt(72)
    default = MultiMNISTNet(channels=8, weight_mode=mode)
    assert default[9].feedback_weight.abs().max() <= 1 / 72**0.5


@pytest.mark.parametrize("mode", ["shared", "symmetric"])
def test_official_feedback_init_refuses_tied_feedback(mode):
    with pytest.raises(ValueError, match="independent feedback weights"):
        MLP((1, 4, 4), 3, hidden=[5], weight_mode=mode, feedback_init="official")
    with pytest.raises(ValueError, match="feedback_init must be one of"):
        ConvNet((1, 8, 8), 3, weight_mode="asymmetric", feedback_init="kaiming")


@pytest.mark.parametrize(
    "layer", [TwoStreamLinear(6, 3, weight_mode="fixed"), TwoStreamConv2d(2, 3, 3, weight_mode="fixed")]
)
def test_fixed_mode_has_no_trainable_feedback(layer):
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert not layer.feedback_weight.requires_grad
    assert "_feedback_weight" in layer.state_dict()


def test_flatten_round_trip():
    layer = TwoStreamFlatten((2, 3, 4))
    x = torch.randn(5, 2, 3, 4)
    assert layer.up(x).shape == (5, 24)
    torch.testing.assert_close(layer.down(layer.up(x)), x)


def test_flatten_with_kept_units_selects_up_and_scatters_down():
    layer = TwoStreamFlatten((2, 3, 4))
    layer.keep = torch.tensor([0, 5, 23])
    x, y = torch.randn(5, 2, 3, 4), torch.randn(5, 3)
    torch.testing.assert_close(layer.up(x), x.flatten(1)[:, [0, 5, 23]])
    expected = torch.zeros(5, 24)
    expected[:, [0, 5, 23]] = y
    torch.testing.assert_close(layer.down(y), expected.view(5, 2, 3, 4))
    assert "keep" in layer.state_dict() and "keep=3 units" in repr(layer)


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_mlp_streams(mode):
    net = MLP((1, 8, 8), 10, hidden=[32, 16], weight_mode=mode)
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert net.down(torch.randn(4, 10)).shape == (4, 1, 8, 8)
    assert [layer.weight.shape for layer in net.weighted_layers()] == [(32, 64), (16, 32), (10, 16)]


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_convnet_streams(mode):
    net = ConvNet((3, 15, 15), 7, channels=[8, 6], hidden=[20], weight_mode=mode)
    assert net(torch.randn(2, 3, 15, 15)).shape == (2, 7)
    assert net.down(torch.randn(2, 7)).shape == (2, 3, 15, 15)


def test_unknown_weight_mode_and_activation_are_rejected():
    with pytest.raises(ValueError, match="weight_mode"):
        TwoStreamLinear(2, 2, weight_mode="mirror")
    with pytest.raises(ValueError, match="activation"):
        MLP((4,), 2, activation="swish")


@pytest.mark.parametrize("mode", WEIGHT_MODES)
def test_residual_block_streams_preserve_shape(mode):
    block = TwoStreamResidualBlock(3, input_size=(6, 5), weight_mode=mode)
    x = torch.randn(2, 3, 6, 5)
    assert block.up(x).shape == x.shape
    assert block.down(x).shape == x.shape
    torch.testing.assert_close(block.up(x), x + block.branch.up(x))  # identity shortcut


@pytest.mark.parametrize(("stride", "size"), [(1, (8, 8)), (2, (8, 8)), (2, (9, 7))])
def test_upsample_feedback_is_nearest_upsampling_then_convolution(stride, size):
    torch.manual_seed(0)
    layer = TwoStreamConv2d(3, 4, 3, stride, 1, weight_mode="asymmetric", input_size=size, feedback="upsample")
    y = layer.up(torch.randn(2, 3, *size))
    assert y.shape == (2, 4, *layer.output_size)
    upsampled = torch.nn.functional.interpolate(y, size=size, mode="nearest")
    expected = torch.nn.functional.conv_transpose2d(upsampled, layer.feedback_weight, layer.feedback_bias, padding=1)
    torch.testing.assert_close(layer.down(y), expected)


def test_upsample_feedback_needs_a_size_preserving_padding():
    with pytest.raises(ValueError, match="upsample"):
        TwoStreamConv2d(3, 4, 3, 2, 0, input_size=(8, 8), feedback="upsample")
    with pytest.raises(ValueError, match="feedback"):
        TwoStreamConv2d(3, 4, 3, 2, 1, input_size=(8, 8), feedback="bilinear")


def test_max_pool_streams():
    pool = TwoStreamMaxPool2d((6, 5))
    x = torch.randn(2, 3, 6, 5)
    assert pool.up(x).shape == (2, 3, *pool.output_size) == (2, 3, 3, 2)
    torch.testing.assert_close(pool.down(torch.ones(2, 3, 3, 2)), torch.ones(2, 3, 6, 5))


def test_mirror_swaps_streams_and_parameters():
    conv = TwoStreamConv2d(3, 4, 3, 2, 1, weight_mode="asymmetric", input_size=(8, 8), feedback="upsample")
    mirror = TwoStreamMirror(conv)
    y = torch.randn(2, 4, 4, 4)
    torch.testing.assert_close(mirror.up(y), conv.down(y))
    assert mirror.down(torch.randn(2, 3, 8, 8)).shape == (2, 4, 4, 4)
    assert mirror.up_parameters() == conv.down_parameters() and mirror.down_parameters() == conv.up_parameters()
    with pytest.raises(ValueError, match="separate"):
        TwoStreamMirror(TwoStreamConv2d(3, 4, 3, 2, 1, input_size=(8, 8)))


def test_pooled_convnet_streams():
    net = PooledConvNet((3, 32, 32), 10, channels=[4, 5, 6, 7, 8])
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert net.down(torch.randn(2, 10)).shape == (2, 3, 32, 32)
    assert not {id(p) for p in net.up_parameters()} & {id(p) for p in net.down_parameters()}
    with pytest.raises(ValueError, match="too small"):
        PooledConvNet((3, 8, 8), 10, channels=[4, 4, 4, 4])


def test_conv_autoencoder_streams_and_norms():
    net = ConvAutoencoder((1, 32, 32), channels=[4, 5, 6, 7])
    x = torch.randn(3, 1, 32, 32)
    assert net(x).shape == x.shape and net.down(x).shape == x.shape
    assert sum(1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 2 * 7
    norms = [(type(a).__name__, getattr(a, "stream", None)) for a in net[1:4]]
    assert norms == [("TwoStreamBatchNorm", "up"), ("TwoStreamActivation", None), ("TwoStreamBatchNorm", "down")]
    up, down = {id(p) for p in net.up_parameters()}, {id(p) for p in net.down_parameters()}
    assert not up & down and up | down == {id(p) for p in net.parameters()}
    with pytest.raises(ValueError, match="divisible by 16"):
        ConvAutoencoder((1, 28, 28), channels=[4, 5, 6, 7])


# --- one sequence of two-stream modules ------------------------------------------------
def test_network_is_one_sliceable_sequence_with_its_activations():
    torch.manual_seed(0)
    net = MLP((1, 4, 4), 3, hidden=[6, 5])
    assert [type(m).__name__ for m in net] == [
        "TwoStreamFlatten", "TwoStreamLinear", "TwoStreamActivation",
        "TwoStreamLinear", "TwoStreamActivation", "TwoStreamLinear",
    ]  # fmt: skip
    x = torch.randn(7, 1, 4, 4)
    features = net[:3]
    assert isinstance(features, TwoStreamNetwork) and len(features) == 3
    first = net[1]
    torch.testing.assert_close(features(x), torch.relu(x.flatten(1) @ first.weight.T + first.bias))
    assert net[-1] is net.head
    assert "TwoStreamActivation(relu)" in repr(net)
    second = net[3]
    penultimate = torch.relu(features(x) @ second.weight.T + second.bias)
    torch.testing.assert_close(net.forward_features(x), penultimate)  # activated, as the head reads it
    torch.testing.assert_close(net.head(net.forward_features(x)), net(x))


def test_pooled_convnet_features_after_the_last_stage_are_activated():
    net = PooledConvNet((3, 8, 8), 4, channels=[3, 5], activation="elu")
    stages = [i for i, m in enumerate(net) if isinstance(m, TwoStreamActivation)]
    features = net[: stages[-1] + 1](torch.randn(2, 3, 8, 8))
    assert features.shape == (2, 5, 2, 2) and features.min() > -1  # ELU's range
    # the feedback network applies the same ELU after the head's feedback map
    net = PooledConvNet((3, 8, 8), 4, channels=[3, 5], activation="elu")
    b = net[stages[-1] :].down(torch.eye(4))
    head = net.head
    expected = torch.nn.functional.elu(torch.eye(4) @ head.feedback_weight).view(4, 5, 2, 2)
    torch.testing.assert_close(b, expected)


def test_per_stream_batch_norm_modules():
    norm = TwoStreamBatchNorm(3, "up")
    x = torch.randn(4, 3, 2, 2) * 5 + 2
    assert torch.allclose(norm.up(x).mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.equal(norm.down(x), x)
    assert norm.up_parameters() and not norm.down_parameters()
    down = TwoStreamBatchNorm(3, "down")
    assert torch.equal(down.up(x), x) and down.down_parameters() and not down.up_parameters()
    with pytest.raises(ValueError, match="stream"):
        TwoStreamBatchNorm(3, "sideways")


def test_max_pool_gated_down_is_backprop_through_max_pooling():
    pool = TwoStreamMaxPool2d((5, 6))
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    (expected,) = torch.autograd.grad(pool.up(x), x, delta)
    torch.testing.assert_close(pool.gated_down(x.detach(), delta), expected)


def test_networks_refuse_modules_that_are_not_two_stream():
    with pytest.raises(TypeError, match="two-stream"):
        TwoStreamNetwork([TwoStreamLinear(3, 2), torch.nn.ReLU()])


def old_layout_state_dict(net: TwoStreamNetwork) -> dict[str, torch.Tensor]:
    """The state dict as the layout before activations and norms were modules saved it:
    maps indexed among themselves (``layers.{i}``), norms in ``up_norms`` / ``down_norms``."""
    state, maps = {}, -1
    for module in net:
        for key, value in module.state_dict().items():
            if isinstance(module, TwoStreamBatchNorm):
                state[f"{module.stream}_norms.{maps}.{key.removeprefix('norm.')}"] = value.clone()
            else:
                state[f"layers.{maps + 1}.{key}"] = value.clone()
        if not isinstance(module, (TwoStreamActivation, TwoStreamBatchNorm)):
            maps += 1
    return state


@pytest.mark.parametrize(
    "build",
    [
        lambda: MLP((1, 4, 4), 3, hidden=[6, 5], weight_mode="asymmetric"),
        lambda: ConvAutoencoder((1, 16, 16), channels=[3, 4]),
        lambda: PooledConvNet((3, 8, 8), 4, channels=[3, 5]),
    ],
)
def test_state_dicts_of_the_old_layout_load(build):
    torch.manual_seed(0)
    source = build()
    with torch.no_grad():
        for tensor in [*source.parameters(), *source.buffers()]:
            tensor.add_(torch.rand_like(tensor.float()).to(tensor.dtype))  # norms' affine and statistics too
    torch.manual_seed(1)
    target = build()
    target.load_state_dict(old_layout_state_dict(source))
    for (key, value), reference in zip(target.state_dict().items(), source.state_dict().values(), strict=True):
        assert torch.equal(value, reference), key
