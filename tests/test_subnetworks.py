"""Sub-network analysis of guided learning: mask statistics, the callback, the
compaction report and the compacted network."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch

from lit_bioplaus import GuidedCounterHebb
from lit_bioplaus.nn import MultiMNISTNet
from lit_bioplaus.subnetworks import SubnetworkMonitor, compact, compaction_report, mask_statistics, task_masks

CHANNELS, HIDDEN = 6, 10


def dyadic(shape: tuple[int, ...]) -> torch.Tensor:
    """Multiples of 1/8 in [-1/2, 1/2], float64: sums and products of a few layers of them
    are exact in any order, so outputs can be compared bitwise."""
    return torch.randint(-4, 5, shape).double() / 8


def make_model(dead_channel: int | None = 2) -> GuidedCounterHebb:
    """A small guided model in exact (dyadic) arithmetic; with ``dead_channel``, the fc's
    weights from that channel of the top conv stage are made negative, so pass 1 (shared
    weights, ReLU) switches the channel off for every task: a whole channel to remove."""
    torch.manual_seed(0)
    model = GuidedCounterHebb(
        network=partial(MultiMNISTNet, channels=CHANNELS, hidden=HIDDEN), num_tasks=2, input_shape=(1, 28, 28)
    ).double()
    with torch.no_grad():
        for tensor in [*model.parameters(), model.instruction_task, model.instruction_hidden]:
            tensor.copy_(dyadic(tensor.shape))
    if dead_channel is not None:
        fc = model.network[9]
        with torch.no_grad():
            columns = fc.weight.view(HIDDEN, CHANNELS, 9)[:, dead_channel]
            columns.copy_(-columns.abs())
    return model.eval()


def test_mask_statistics_by_hand():
    masks = [torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)]
    (active,), (cosine,) = mask_statistics(masks)
    torch.testing.assert_close(active, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(cosine, torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64))


def test_compaction_report_counts_by_hand():
    model = make_model()
    report = compaction_report(model)
    masks = task_masks(model)
    assert report.units == [int(m[0].numel()) for m in masks]
    assert report.unused_units == [int((~m.any(0)).sum()) for m in masks]
    # ungated MACs: every weight of every map applied at every output position
    full = 24 * 24 * 25 * CHANNELS + 12 * 12 * 4 * CHANNELS + 8 * 8 * 25 * CHANNELS**2
    full += 3 * 3 * 9 * CHANNELS + 9 * CHANNELS * HIDDEN + HIDDEN * 10
    assert report.macs == full
    assert all(0 < m < report.macs_union <= report.macs for m in report.macs_per_task)
    # the dead channel's conv2 filters, its depthwise filter, its fc columns and biases
    per_channel = 25 * CHANNELS + 1 + 9 + 1 + 9 * HIDDEN
    assert report.removable_parameters >= per_channel
    assert "MACs per task" in str(report)


def test_compacted_network_gives_the_same_outputs_for_every_task():
    model = make_model()
    smaller = compact(model)
    conv2, fc = smaller.network[4], smaller.network[9]
    assert conv2.weight.shape[0] == CHANNELS - 1 and smaller.network[6].groups == CHANNELS - 1
    # of the flattened top conv units, only those some task uses stay: fewer than the kept
    # channels' 9 positions each, so the flatten drops units inside kept channels too
    used = task_masks(model)[3].any(0)
    assert fc.in_features == int(used.sum()) < (CHANNELS - 1) * 9
    assert smaller.network[8].keep is not None and len(smaller.network[8].keep) == fc.in_features
    removed = compaction_report(model).removable_parameters
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in smaller.parameters()) == removed
    x = dyadic((64, 1, 28, 28))
    for task in range(2):
        # the removed units output exactly 0; in exact arithmetic the summation order of
        # the smaller maps cannot matter, so any wrongly kept or dropped unit shows
        output = model(x, task)
        assert output.abs().max() > 1 and torch.equal(smaller(x, task), output)


def test_compacting_a_compacted_network_removes_nothing_more():
    smaller = compact(make_model())
    again = compact(smaller)
    assert compaction_report(smaller).removable_parameters == 0
    assert torch.equal(again.network[8].keep, smaller.network[8].keep)
    assert [p.shape for p in again.parameters()] == [p.shape for p in smaller.parameters()]
    x = dyadic((16, 1, 28, 28))
    for task in range(2):
        assert torch.equal(again(x, task), smaller(x, task))


def test_subnetwork_monitor_logs_scalars_and_a_heat_map(tmp_path):
    model = make_model(None).float()
    images = torch.randn(16, 1, 28, 28)
    data = torch.utils.data.TensorDataset(images, torch.randint(0, 10, (16, 2)), torch.arange(16) % 2)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[SubnetworkMonitor(every_n_epochs=2)], default_root_dir=tmp_path,
        logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_progress_bar=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    metrics = trainer.callback_metrics
    assert {"subnet/active_layer0_task0", "subnet/cosine_layer4_tasks01"} <= set(metrics)
    assert 0 < float(metrics["subnet/active_layer0_task1"]) < 1
    assert (tmp_path / "lightning_logs" / "version_0" / "mask_cosine" / "epoch_1.png").is_file()
    with pytest.raises(ValueError, match="every_n_epochs"):
        SubnetworkMonitor(0)


def test_compaction_of_a_network_whose_top_gate_is_a_conv():
    """The instruction head reads the flattened conv units, not its channels."""
    from lit_bioplaus.nn import ConvNet

    torch.manual_seed(0)
    network = partial(ConvNet, channels=(4,), kernel_size=3, stride=2, padding=1, hidden=())
    model = GuidedCounterHebb(network=network, num_tasks=2, input_shape=(1, 8, 8), instruction_width=5).double()
    with torch.no_grad():
        for tensor in [*model.parameters(), model.instruction_task, model.instruction_hidden]:
            tensor.copy_(dyadic(tensor.shape))
    with torch.no_grad():  # switch channel 1 off for every task: the instruction head drives it negative
        columns = model.instruction_hidden.view(5, 4, 16)[:, 1]
        columns.copy_(-columns.abs())
    smaller = compact(model.eval())
    used = task_masks(model)[0].any(0)  # (4, 4, 4): channel 1 unused, some units of the others too
    assert not used[1].any() and int(used.sum()) < 48
    assert smaller.network[0].out_channels == 3 and smaller.instruction_hidden.shape == (5, int(used.sum()))
    x = dyadic((16, 1, 8, 8))
    again = compact(smaller)
    assert again.instruction_hidden.shape == smaller.instruction_hidden.shape
    for task in range(2):
        assert torch.equal(smaller(x, task), model(x, task)) and torch.equal(again(x, task), model(x, task))
