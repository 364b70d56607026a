"""Instructed Counter-Hebb learning: with shared or symmetric weights the update IS the
autograd gradient of the gated BU pass (gates held constant), for an MLP and the
Multi-MNIST network (depthwise pool-convs, output padding), single and multi decoder."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lit_bioplaus import GuidedBackProp, GuidedCounterHebb
from lit_bioplaus.algorithms import BackProp, TaskTarget
from lit_bioplaus.nn import MLP, MultiMNISTNet, TwoStreamActivation, TwoStreamConv2d

T, C = 3, 10
NETWORKS = {
    "mlp_single": (lambda mode: partial(MLP, hidden=[13, 11], weight_mode=mode), (1, 6, 6)),
    "mlp_multi": (
        lambda mode: lambda shape, classes: MLP(shape, T * classes, hidden=[13, 11], weight_mode=mode),
        (1, 6, 6),
    ),
    "multi_mnist_single": (lambda mode: partial(MultiMNISTNet, channels=4, hidden=7, weight_mode=mode), (1, 28, 28)),
    "multi_mnist_multi": (
        lambda mode: partial(MultiMNISTNet, channels=4, hidden=7, decoder="multi", num_tasks=T, weight_mode=mode),
        (1, 28, 28),
    ),
}


def make(cls, network: str, mode: str, **options):
    build, shape = NETWORKS[network]
    torch.manual_seed(0)
    return cls(network=build(mode), num_tasks=T, num_classes=C, input_shape=shape, instruction_width=9, **options)


def batch(shape, n: int = 12):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, C, (n, T), generator=generator), torch.arange(n) % T


def update(model, x_batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    x, target = model.split_batch(x_batch)
    model.training_objective(x, target)[0].backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def written_out_gradient(model, x_batch) -> dict[str, torch.Tensor]:
    """Autograd of the guided BU pass written out here: pass 1 on one-hots with ReLU and no
    bias through the TD maps, gates ``[hb > 0]`` held constant, pass 2 ``h = act(f(h)) * G``,
    cross-entropy of the task's decoder slot."""
    x, labels, task = x_batch
    modules = list(model.network)
    with torch.no_grad():
        e = F.one_hot(task, T).to(x.dtype)
        hb = torch.relu(torch.relu(e @ model.instruction_task) @ model.instruction_hidden)
        gates = {}
        for index in reversed(range(len(modules) - 1)):
            module = modules[index]
            hb = torch.relu(hb) if isinstance(module, TwoStreamActivation) else module.down(hb, use_bias=False)
            if isinstance(module, TwoStreamActivation):
                gates[index] = (hb > 0).to(x.dtype)
    h = x
    for index, module in enumerate(modules):
        h = module.up(h)
        if index in gates:
            h = h * gates[index]
    if h.shape[1] == T * C:
        h = h.view(-1, T, C)[torch.arange(len(task)), task]
    loss = F.cross_entropy(h, labels[torch.arange(len(task)), task])
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("mode", ["shared", "symmetric"])
def test_guided_update_equals_the_gradient_of_the_gated_pass(network, mode):
    model = make(GuidedCounterHebb, network, mode).double()
    x_batch = batch(model.input_shape)
    counter_hebb = update(model, x_batch)
    expected = written_out_gradient(model, x_batch)
    assert expected and set(expected) <= set(counter_hebb)
    for name, grad in expected.items():
        torch.testing.assert_close(counter_hebb[name], grad, rtol=0, atol=1e-10, msg=name)
        if mode == "symmetric" and name.endswith(".weight"):
            feedback = name.replace(".weight", "._feedback_weight")
            torch.testing.assert_close(counter_hebb[feedback], grad, rtol=0, atol=1e-10, msg=feedback)
    twin = make(GuidedBackProp, network, mode).double()
    twin.load_state_dict(model.state_dict())
    for name, grad in update(twin, x_batch).items():
        torch.testing.assert_close(grad, expected[name], rtol=0, atol=1e-10, msg=f"BP twin {name}")


@pytest.mark.parametrize("network", ["mlp_multi", "multi_mnist_single"])
def test_asymmetric_td_weights_get_the_bu_update(network):
    model = make(GuidedCounterHebb, network, "asymmetric").double()
    grads = update(model, batch(model.input_shape))
    weights = [name for name in grads if name.endswith("._feedback_weight")]
    assert weights
    for name in weights:
        torch.testing.assert_close(grads[name], grads[name.replace("._feedback_weight", ".weight")], rtol=0, atol=1e-12)


def test_instruction_head_is_fixed_and_has_no_optimizer_state():
    model = make(GuidedCounterHebb, "multi_mnist_single", "shared")
    names = {name for name, _ in model.named_parameters()}
    assert not any("instruction" in name for name in names)
    assert {"instruction_task", "instruction_hidden"} <= set(model.state_dict())
    optimizer = model.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    assert model.instruction_task.shape == (T, 9) and model.instruction_hidden.shape == (9, 7)


def test_pass_one_runs_on_the_tasks_and_gates_are_shared_by_a_task():
    model = make(GuidedCounterHebb, "multi_mnist_single", "shared")
    gates = model.task_gates()
    modules = list(model.network)
    assert list(gates) == [str(i) for i, m in enumerate(modules[:-1]) if isinstance(m, TwoStreamActivation)]
    assert all(mask.shape[0] == T for mask in gates.values())  # T rows, not N
    task = torch.tensor([0, 2, 0, 1, 2, 0])
    per_sample = model.sample_gates(task)
    for mask in per_sample.values():
        assert torch.equal(mask[0], mask[2]) and torch.equal(mask[0], mask[5]) and torch.equal(mask[1], mask[4])
        assert 0 < float(mask.mean()) < 1
    assert not all(torch.equal(gates[i][0], gates[i][1]) for i in gates)


def test_errors_stay_inside_the_task_sub_network():
    model = make(GuidedCounterHebb, "multi_mnist_single", "shared").double()
    x, labels, task = batch(model.input_shape)
    gates = model.sample_gates(task)
    trace = model.up_pass(x, gates)
    _, delta = model.output_error(trace.logits, TaskTarget(labels[torch.arange(len(task)), task], task))
    deltas = model.down_pass(trace, delta, gates).deltas
    for name, mask in gates.items():
        assert not deltas[int(name)][mask == 0].any()
        assert not trace.outputs[int(name)][mask == 0].any()


def test_multi_decoder_reads_the_task_slot():
    model = make(GuidedBackProp, "multi_mnist_multi", "shared").double()
    x, _, task = batch(model.input_shape)
    all_tasks = model(x)
    assert all_tasks.shape == (len(x), T, C)
    for t in range(T):
        torch.testing.assert_close(model(x, t), all_tasks[:, t])
    torch.testing.assert_close(model.predict(x, task).sum(-1), torch.ones(len(x), dtype=torch.float64))
    with pytest.raises(ValueError, match="task"):
        model(x, T)


def test_train_all_tasks_averages_the_loss_over_tasks():
    model = make(GuidedBackProp, "mlp_single", "shared", train_all_tasks=True).double()
    x, labels, task = batch(model.input_shape)
    inputs, target = model.split_batch((x, labels, task))
    assert inputs.shape[0] == T * len(x)
    objective = model.training_objective(inputs, target)[0]
    expected = torch.stack([F.cross_entropy(model(x, t), labels[:, t]) for t in range(T)]).mean()
    torch.testing.assert_close(objective, expected)


def test_unguided_rules_refuse_multi_task_data_and_heads_must_fit():
    with pytest.raises(ValueError, match="GuidedCounterHebb"):
        BackProp(num_tasks=2)
    with pytest.raises(ValueError, match="outputs"):
        GuidedCounterHebb(network=lambda s, c: MLP(s, 7, hidden=[4]), num_tasks=2, num_classes=3, input_shape=(4,))


def test_depthwise_conv_is_grouped_and_its_td_map_is_the_adjoint():
    torch.manual_seed(0)
    layer = TwoStreamConv2d(4, 4, 3, 2, 0, bias=False, groups=4, input_size=(8, 8)).double()
    assert layer.weight.shape == (4, 1, 3, 3) and layer.output_padding == (1, 1)
    x, y = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close((layer.up(x) * y).sum(), (x * layer.down(y)).sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.up(x), F.conv2d(x, layer.weight, stride=2, groups=4))


def test_multi_mnist_net_has_the_papers_size():
    net = MultiMNISTNet(channels=100)
    assert sum(p.numel() for p in net.parameters()) == 299_760
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert MultiMNISTNet(channels=8, decoder="multi", num_tasks=2)(torch.zeros(2, 1, 28, 28)).shape == (2, 20)


def test_pass_one_is_relu_and_ignores_mixed_precision():
    model = make(GuidedCounterHebb, "mlp_single", "shared")
    reference = model.task_gates()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.task_gates()
    for index, mask in reference.items():
        assert mixed[index].dtype == torch.float32 and torch.equal(mixed[index], mask)
