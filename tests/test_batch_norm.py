"""Counter-Hebb learning through per-stream batch-norm and strided residual blocks
(ALGORITHMS.md 4.1.1 and 4.3): with ``error_norm="vjp"`` the update equals the autograd
gradient (float64, train mode, batch statistics), gamma and beta included, unguided and
guided; ``td_bn`` equals the official code's renormalised error, written out here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lit_bioplaus import CounterHebb, FeedbackAlignment, GuidedBackProp, GuidedCounterHebb
from lit_bioplaus.algorithms.guided import TaskTarget
from lit_bioplaus.nn import (
    MLP,
    ConvNet,
    ResNet18,
    TwoStreamActivation,
    TwoStreamBatchNorm,
    TwoStreamConv2d,
    TwoStreamFlatten,
    TwoStreamLinear,
    TwoStreamNetwork,
    TwoStreamResidualBlock,
)

T, N = 3, 8


def residual_net(outputs: int, weight_mode: str = "shared") -> TwoStreamNetwork:
    """A stem and two residual blocks (the first strided with a 1x1 downsample, on an odd
    7x7 input), per-stream batch-norm, no biases, on ``(3, 7, 7)`` inputs."""
    return TwoStreamNetwork([
        TwoStreamConv2d(3, 4, 3, 1, 1, bias=False, input_size=(7, 7), weight_mode=weight_mode),
        TwoStreamBatchNorm(4, "up"), TwoStreamActivation(),
        TwoStreamResidualBlock(4, 6, 2, (7, 7), False, weight_mode, batch_norm=True), TwoStreamActivation(),
        TwoStreamResidualBlock(6, 6, 1, (4, 4), False, weight_mode, batch_norm=True), TwoStreamActivation(),
        TwoStreamFlatten((6, 4, 4)), TwoStreamLinear(96, outputs, weight_mode=weight_mode),
    ])  # fmt: skip


NETWORKS = {
    "mlp": ((1, 6, 6), lambda shape, outputs, **kw: MLP(shape, outputs, hidden=[7, 5], batch_norm=True, **kw)),
    "conv": (
        (1, 6, 6),
        lambda shape, outputs, **kw: ConvNet(shape, outputs, [3, 4], hidden=[5], batch_norm=True, **kw),
    ),
    "residual": ((3, 7, 7), lambda shape, outputs, **kw: residual_net(outputs, **kw)),
}


def unguided(name: str, mode: str = "shared", **kwargs) -> CounterHebb:
    shape, build = NETWORKS[name]
    torch.manual_seed(0)
    network = lambda s, c: build(s, c, weight_mode=mode)  # noqa: E731
    return CounterHebb(network=network, input_shape=shape, num_classes=4, **kwargs).double()


def guided(name: str, decoder: str = "single", cls=GuidedCounterHebb, **kwargs):
    shape, build = NETWORKS[name]
    torch.manual_seed(0)
    outputs = 4 * (T if decoder == "multi" else 1)
    network = lambda s, c: build(s, outputs)  # noqa: E731
    return cls(network=network, input_shape=shape, num_classes=4, num_tasks=T, instruction_width=6, **kwargs).double()


def randomise_norms(model) -> None:
    """Affine parameters away from (1, 0), so gamma and beta matter."""
    with torch.no_grad():
        for module in model.network.modules():
            if isinstance(module, TwoStreamBatchNorm):
                module.norm.weight.uniform_(0.5, 1.5)
                module.norm.bias.uniform_(-0.5, 0.5)


def counter_hebb_update(model, x, target) -> dict[str, torch.Tensor]:
    model.train().zero_grad()
    energy, _, _ = model.training_objective(x, target)
    energy.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def autograd_gradient(model, x, target, guided_model: bool) -> dict[str, torch.Tensor]:
    """Backprop through the BU pass in train mode (``nn.BatchNorm``'s own backward); for a
    guided model through pass 2 with the gates of pass 1 as constants."""
    model.train().zero_grad()
    outputs = model.gated_outputs(x, target.task) if guided_model else model.network(x)
    model.loss(outputs, target).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_update_is_gradient(model, x, target, guided_model: bool = False) -> None:
    randomise_norms(model)
    state = copy.deepcopy(model.state_dict())
    update = counter_hebb_update(model, x, target)
    model.load_state_dict(state)
    gradient = autograd_gradient(model, x, target, guided_model)
    for name in [name for name in update if name.endswith("_feedback_weight")]:  # separate TD weights
        torch.testing.assert_close(
            update.pop(name), gradient[name.replace("_feedback_weight", "weight")], rtol=0, atol=1e-10
        )
    update = {name: value for name, value in update.items() if not name.endswith("feedback_bias")}  # not gradients
    assert update.keys() == gradient.keys()
    assert any(name.endswith("norm.weight") for name in update) and any(name.endswith("norm.bias") for name in update)
    for name, value in gradient.items():
        assert value.abs().max() > 0, name
        torch.testing.assert_close(update[name], value, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("mode", ["shared", "symmetric"])
@pytest.mark.parametrize("name", NETWORKS)
def test_unguided_update_through_batch_norm_is_the_gradient(name, mode):
    model = unguided(name, mode)
    x = torch.randn(N, *model.input_shape, dtype=torch.float64)
    assert_update_is_gradient(model, x, torch.randint(0, 4, (N,)))


@pytest.mark.parametrize("decoder", ["single", "multi"])
@pytest.mark.parametrize("name", NETWORKS)
def test_guided_update_through_batch_norm_is_the_gradient(name, decoder):
    model = guided(name, decoder)
    x = torch.randn(N, *model.input_shape, dtype=torch.float64)
    target = TaskTarget(torch.randint(0, 4, (N,)), torch.tensor([0, 1, 1, 2, 2, 2, 0, 2]))
    assert_update_is_gradient(model, x, target, guided_model=True)


def test_resnet18_guided_update_is_the_gradient_and_its_gates_are_named_inside_blocks():
    torch.manual_seed(0)
    model = GuidedCounterHebb(
        network=lambda s, c: ResNet18(s, c, width=2, decoder="multi", num_tasks=T),
        input_shape=(3, 9, 9), num_classes=1, num_tasks=T, loss="bce", instruction_width=5,
    ).double()  # fmt: skip
    assert len(model.gate_points) == 1 + 8 * 2  # the stem, each block's inner activation and output
    assert "3.branch.3" in model.gate_points  # block 3's inner activation
    x = torch.randn(6, 3, 9, 9, dtype=torch.float64)
    assert_update_is_gradient(model, x, TaskTarget(torch.randint(0, 2, (6,)), torch.tensor([0, 1, 1, 2, 2, 2])), True)


def test_resnet18_geometry_matches_the_paper_at_celeba_resolution():
    network = ResNet18((3, 218, 178), 1)
    assert network.head.in_features == 512 * 28 * 23
    assert sum(p.numel() for p in network.parameters()) == 11_506_241
    torchvision_style = ResNet18((3, 64, 64), 10, width=4, style="torchvision")
    assert torchvision_style.head.in_features == 32
    assert torchvision_style(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert torchvision_style.down(torch.randn(2, 10)).shape == (2, 3, 64, 64)


def test_feedback_alignment_trains_batch_norm_parameters():
    shape, _ = NETWORKS["conv"]
    torch.manual_seed(0)
    model = FeedbackAlignment(
        network=lambda s, c: ConvNet(s, c, channels=[3, 4], hidden=[5], batch_norm=True, weight_mode="fixed"),
        input_shape=shape, num_classes=4,
    ).double()  # fmt: skip
    update = counter_hebb_update(model, torch.randn(N, *shape, dtype=torch.float64), torch.randint(0, 4, (N,)))
    assert any(name.endswith("norm.weight") for name in update)


def test_bu_and_td_running_statistics_are_separate_and_survive_a_checkpoint(tmp_path):
    model = guided("conv")
    x = torch.randn(N, *model.input_shape, dtype=torch.float64)
    counter_hebb_update(model, x, TaskTarget(torch.randint(0, 4, (N,)), torch.tensor([0, 1, 1, 2, 2, 2, 0, 2])))
    norms = [m.norm for m in model.network.modules() if isinstance(m, TwoStreamBatchNorm)]
    ups = [m.norm for m in model.network.modules() if isinstance(m, TwoStreamBatchNorm) and m.stream == "up"]
    downs = [m.norm for m in model.network.modules() if isinstance(m, TwoStreamBatchNorm) and m.stream == "down"]
    assert ups and downs
    for norm in norms:
        assert int(norm.num_batches_tracked) == 1 and norm.running_mean.abs().max() > 0
    pointers = {norm.running_mean.data_ptr() for norm in norms} | {norm.running_var.data_ptr() for norm in norms}
    assert len(pointers) == 2 * len(norms)
    path = tmp_path / "state.pt"
    torch.save(model.state_dict(), path)
    restored = guided("conv")
    restored.load_state_dict(torch.load(path, weights_only=True))
    for (name, value), (_, expected) in zip(restored.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name


def test_td_bn_error_pass_matches_the_written_out_official_update():
    torch.manual_seed(0)
    network = lambda s, c: TwoStreamNetwork([  # noqa: E731
        TwoStreamFlatten((4,)), TwoStreamLinear(4, 5), TwoStreamBatchNorm(5, "up", spatial=False),
        TwoStreamActivation(), TwoStreamBatchNorm(5, "down", spatial=False), TwoStreamLinear(5, 3),
    ])  # fmt: skip
    model = CounterHebb(network=network, input_shape=(4,), num_classes=3, error_norm="td_bn").double()
    randomise_norms(model)
    x, labels = torch.randn(N, 4, dtype=torch.float64), torch.randint(0, 3, (N,))
    first, bu, _, td, head = (model.network[i] for i in (1, 2, 3, 4, 5))
    eps = bu.norm.eps

    def normalise(z, gamma, beta):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps) * gamma + beta

    with torch.no_grad():
        z = x @ first.weight.T + first.bias
        normalised = normalise(z, bu.norm.weight, bu.norm.bias)
        hidden = torch.relu(normalised)
        logits = hidden @ head.weight.T + head.bias
        error = logits.softmax(1) - F.one_hot(labels, 3)  # N dLoss/dy
        top_down = error @ head.weight  # bias-blocked TD map
        renormalised = normalise(top_down, td.norm.weight, td.norm.bias)  # the TD batch-norm, over the batch
        delta = renormalised * (normalised > 0)  # GaLU; the BU batch-norm passes it
        expected = {
            "network.5.weight": error.T @ hidden / N, "network.5.bias": error.mean(0),
            "network.1.weight": delta.T @ x / N, "network.1.bias": delta.mean(0),
        }  # fmt: skip
    update = counter_hebb_update(model, x, labels)
    assert update.keys() == expected.keys()  # no batch-norm parameter learns
    for name, value in expected.items():
        torch.testing.assert_close(update[name], value, rtol=0, atol=1e-12, msg=name)
    torch.testing.assert_close(td.norm.running_mean, 0.1 * top_down.mean(0), rtol=0, atol=1e-12)  # pass 3 updates it
    gradient = autograd_gradient(model, x, labels, guided_model=False)["network.1.weight"]
    cosine = F.cosine_similarity(update["network.1.weight"].flatten(), gradient.flatten(), dim=0)
    assert cosine < 0.99  # td_bn is not the gradient


@pytest.mark.parametrize("shape", [(5,), (5, 3, 2)])
def test_pass_one_batch_norm_on_task_rows_equals_the_batch_of_samples(shape):
    torch.manual_seed(0)
    norm = TwoStreamBatchNorm(5, "down", spatial=len(shape) > 1).double()
    reference = copy.deepcopy(norm.norm)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        reference.weight.copy_(norm.norm.weight)
    rows, counts = torch.randn(T, *shape, dtype=torch.float64), torch.tensor([3, 0, 5])
    out = norm.instruct(rows, counts)
    samples = rows.repeat_interleave(counts, dim=0)  # the official code's N rows
    expected = reference(samples)
    torch.testing.assert_close(out.repeat_interleave(counts, dim=0), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(norm.norm.running_mean, reference.running_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(norm.norm.running_var, reference.running_var, rtol=0, atol=1e-12)
    before = norm.norm.running_mean.clone()
    norm.instruct(rows)  # no counts: running statistics, nothing updated
    assert torch.equal(norm.norm.running_mean, before)
    assert torch.equal(TwoStreamBatchNorm(5, "up", spatial=len(shape) > 1).instruct(rows, counts), rows)


def test_guided_gates_with_td_batch_norm_follow_the_batch_and_are_shared_by_a_task():
    model = guided("conv").train()
    task = torch.tensor([0, 1, 1, 2, 2, 2, 0, 2])
    gates = model.sample_gates(task)
    for mask in gates.values():
        for t in range(T):
            rows = mask[task == t]
            assert (rows == rows[0]).all()
    model.eval()
    before = copy.deepcopy(model.state_dict())
    model.task_gates()
    model.sample_gates(task)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # evaluation updates no statistics


def test_error_norm_is_checked():
    with pytest.raises(ValueError, match="error_norm"):
        unguided("mlp", error_norm="sideways")
    with pytest.raises(ValueError, match="has none"):
        CounterHebb(network=lambda s, c: MLP(s, c, hidden=[5]), input_shape=(4,), num_classes=2, error_norm="td_bn")
    with pytest.raises(ValueError, match="error_norm"):
        TwoStreamBatchNorm(3, "up", error_norm="sideways")


def test_counter_hebb_refuses_synchronised_batch_norm():
    model = unguided("conv")
    model.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.network)
    with pytest.raises(ValueError, match="sync_batchnorm"):
        model.on_fit_start()


def test_binary_tasks_use_one_logit_and_the_sigmoid_error():
    with pytest.raises(ValueError, match="bce"):
        guided("mlp", loss="bce")  # 4 logits per task, not 1
    torch.manual_seed(0)
    binary = GuidedBackProp(
        network=lambda s, c: MLP(s, c, hidden=[5]), input_shape=(4,), num_classes=1, num_tasks=T, loss="bce"
    )
    logits, labels = torch.randn(N, 1, dtype=torch.float64), torch.randint(0, 2, (N,))
    _, error = CounterHebb.output_error(binary, logits, TaskTarget(labels, torch.zeros(N, dtype=torch.long)))
    torch.testing.assert_close(error[:, 0], logits[:, 0].sigmoid() - labels)
    assert binary.predict(torch.randn(2, 4), task=1).shape == (2, 1)
