"""Analysis callbacks: linear CKA, weight alignment, kernels and t-SNE against direct
formulas on tiny inputs; the callbacks in tiny fits (PNGs in the run folder, history kept
across a resume, one-line refusals), in a W&B offline run of a shipped config, and the cost
benchmark."""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lit_bioplaus import BackProp, CounterCurrent, GuidedCounterHebb
from lit_bioplaus.analysis import (
    Embedding,
    ReceptiveFields,
    StreamCKA,
    WeightAlignment,
    cka_matrix,
    first_layer_kernels,
    kernel_grid,
    layer_representations,
    linear_cka,
    stream_representations,
    tsne_embedding,
    weight_alignment,
)
from lit_bioplaus.cli import main
from lit_bioplaus.io import stale_temporaries
from lit_bioplaus.nn import MLP, ConvNet, MultiMNISTNet, TwoStreamActivation, TwoStreamLinear, TwoStreamNetwork
from tests.fake_data import write_all
from tests.test_wandb import wandb  # noqa: F401 (the fixture: W&B for a user who never logged in)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
sys.path.insert(0, str(ROOT / "benchmarks"))

import analysis_cost  # noqa: E402


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CKA written out with the centring matrix: ``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))``,
    ``K = X X^T``, ``L = Y Y^T``, ``H = I - 11^T / n``."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1 / n, dtype=torch.float64)
    k, l = x @ x.T, y @ y.T  # noqa: E741
    return torch.trace(k @ h @ l @ h) / torch.sqrt(torch.trace(k @ h @ k @ h) * torch.trace(l @ h @ l @ h))


# --- linear CKA -----------------------------------------------------------------------------------
def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_an_orthogonal_map():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=generator)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    assert linear_cka(x, x.double() @ q).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_scaling_and_a_shift():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(30, 5, generator=generator, dtype=torch.float64)
    shift = torch.randn(5, generator=generator, dtype=torch.float64)
    assert linear_cka(x, -3.5 * x + shift).item() == pytest.approx(1.0, abs=1e-12)


def test_cka_of_independent_random_matrices_is_small():
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(2000, 4, generator=generator), torch.randn(2000, 6, generator=generator)
    assert linear_cka(x, y).item() < 0.02


def test_cka_matches_the_hsic_formula():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(25, 2, 3, 3, generator=generator)  # flattened to (25, 18)
    y = torch.randn(25, 4, generator=generator) + x.flatten(1)[:, :4]
    assert linear_cka(x, y).item() == pytest.approx(hsic_cka(x, y).item(), abs=1e-6)


def test_cka_matrix_holds_every_pair():
    generator = torch.Generator().manual_seed(5)
    xs = [torch.randn(20, d, generator=generator) for d in (3, 8)]
    ys = [torch.randn(20, d, generator=generator) for d in (2, 5, 9)]
    expected = torch.stack([torch.stack([hsic_cka(x, y) for y in ys]) for x in xs])
    torch.testing.assert_close(cka_matrix(xs, ys), expected, atol=1e-10, rtol=0)


# --- weight alignment -----------------------------------------------------------------------------
def set_feedback(layer: TwoStreamLinear, weight: torch.Tensor, feedback: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.feedback_weight.copy_(feedback)


def test_alignment_is_0_degrees_for_the_transpose_and_90_for_an_orthogonal_feedback():
    network = MLP((1, 2, 2), 2, hidden=[2], weight_mode="asymmetric")
    first, head = network.weighted_layers()
    # the feedback weight is stored in the forward layout: B^T = W means feedback == weight
    set_feedback(first, torch.tensor([[1.0, 2, 0, 0], [0, 0, 3, 4]]), torch.tensor([[2.0, 4, 0, 0], [0, 0, 6, 8]]))
    set_feedback(head, torch.tensor([[1.0, 0], [0, 0]]), torch.tensor([[0.0, 1], [0, 0]]))
    (angle_0, ratio_0), (angle_1, ratio_1) = weight_alignment(network).values()
    assert angle_0.item() == pytest.approx(0.0, abs=1e-3) and ratio_0.item() == pytest.approx(2.0)
    assert angle_1.item() == pytest.approx(90.0) and ratio_1.item() == pytest.approx(1.0)


def test_alignment_matches_a_hand_computation_and_skips_shared_layers():
    torch.manual_seed(6)
    shared, asymmetric = TwoStreamLinear(9, 5, weight_mode="shared"), TwoStreamLinear(5, 4, weight_mode="asymmetric")
    network = TwoStreamNetwork([shared, TwoStreamActivation("relu"), asymmetric])
    w, b = asymmetric.weight.detach().double(), asymmetric.feedback_weight.detach().double()
    by_hand = math.degrees(math.acos((w * b).sum() / (w.norm() * b.norm())))
    ((index, (angle, ratio)),) = weight_alignment(network).items()
    assert index == 1  # its position among the weighted layers, as in align/angle_{i}
    assert angle.item() == pytest.approx(by_hand, abs=1e-4)
    assert ratio.item() == pytest.approx((b.norm() / w.norm()).item())


# --- kernels, t-SNE, representations ----------------------------------------------------------------
def test_kernel_grid_of_an_mlp_shows_rows_of_the_first_weight_as_input_images():
    model = BackProp(network=partial(MLP, hidden=[12]), input_shape=(1, 28, 28))
    kernels = first_layer_kernels(model)
    assert kernels.shape == (12, 1, 28, 28)
    torch.testing.assert_close(kernels[3].flatten(), model.network[1].weight[3].detach())
    grid = kernel_grid(kernels)  # 4 columns x 3 rows of 28-pixel tiles, 2-pixel padding
    assert grid.shape == (3, 3 * 30 + 2, 4 * 30 + 2)
    assert grid.min() >= 0 and grid.max() <= 1


def test_kernel_grid_of_a_conv_net_shows_its_enlarged_kernels():
    model = BackProp(network=partial(ConvNet, channels=[5, 4]), input_shape=(3, 8, 8))
    kernels = first_layer_kernels(model)
    assert kernels.shape == (5, 3, 3, 3)
    grid = kernel_grid(kernels)  # 3x3 kernels enlarged 10x: 3 columns x 2 rows of 30-pixel tiles
    assert grid.shape == (3, 2 * 32 + 2, 3 * 32 + 2)


def test_first_layer_kernels_must_be_images():
    model = BackProp(network=partial(ConvNet, channels=[5]), input_shape=(2, 8, 8))
    with pytest.raises(ValueError, match="kernels with 2 input channels are not images"):
        first_layer_kernels(model)


def test_tsne_embedding_has_two_coordinates_per_sample_and_is_reproducible():
    features = torch.randn(30, 3, 4, generator=torch.Generator().manual_seed(7))
    embedding = tsne_embedding(features)
    assert embedding.shape == (30, 2) and torch.isfinite(embedding).all()
    torch.testing.assert_close(tsne_embedding(features), embedding, rtol=0, atol=0)


def test_layer_representations_of_an_mlp_are_its_activations_and_output():
    model = BackProp(network=partial(MLP, hidden=[7, 5]), input_shape=(1, 4, 4), num_classes=3).eval()
    x = torch.randn(6, 1, 4, 4)
    with torch.no_grad():
        representations = layer_representations(model, x)
        first = model.network[1]
        assert list(representations) == ["h1", "h2", "output"]
        torch.testing.assert_close(representations["h1"], F.relu(first.up(x.flatten(1))))
        torch.testing.assert_close(representations["output"], model(x))
    with pytest.raises(ValueError, match="task applies to guided modules, not to BackProp"):
        layer_representations(model, x, task=0)


def test_layer_representations_of_a_guided_net_follow_the_task():
    model = GuidedCounterHebb(
        network=partial(MultiMNISTNet, channels=2, hidden=5), num_tasks=2, input_shape=(1, 28, 28)
    ).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for task in (0, 1):
            output = layer_representations(model, x, task)["output"]
            torch.testing.assert_close(output, model.gated_outputs(x, torch.full((3,), task)))
    with pytest.raises(ValueError, match=r"needs task in \[0, 2\)"):
        layer_representations(model, x)


def test_stream_representations_pair_each_image_with_its_class_feedback():
    model = CounterCurrent(
        network=partial(MLP, hidden=[6], activation="elu", weight_mode="asymmetric"),
        input_shape=(1, 4, 4),
        num_classes=3,
    ).eval()
    x, labels = torch.randn(8, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1])
    with torch.no_grad():
        forward, feedback = stream_representations(model, x, labels)
        per_class = model.feedback_activities(torch.eye(3))
    assert len(forward) == len(feedback) == 3  # input, h1, output
    for a, b, signal in zip(forward, feedback, per_class, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, signal[labels])


def test_options_out_of_range_are_refused():
    with pytest.raises(ValueError, match="every_n_epochs must be at least 1, got 0"):
        WeightAlignment(every_n_epochs=0)
    with pytest.raises(ValueError, match="num_samples must be at least 2, got 1"):
        StreamCKA(num_samples=1)
    with pytest.raises(ValueError, match="max_units must be at least 1, got 0"):
        ReceptiveFields(max_units=0)
    with pytest.raises(ValueError, match=r"perplexity must be in \(0, inf\], got 0"):
        Embedding(perplexity=0)


# --- the callbacks in tiny fits ---------------------------------------------------------------------
def fit(config: str, folder: Path, *args: str, epochs: int = 2):
    """``fit`` of a quick-start config for ``epochs`` epochs of 3 batches, its CSV logger in ``folder``."""
    return main([
        "fit", "--config", str(CONFIGS / config), "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--test_after_fit", "false",
        "--trainer.logger.init_args.save_dir", str(folder), "--trainer.default_root_dir", str(folder), *args,
    ])  # fmt: skip


def callbacks(*names: str) -> list[str]:
    """``--trainer.callbacks+=`` of ``lit_bioplaus.analysis`` classes; ``name:key=value``
    sets an option of the callback just added."""
    args = []
    for name in names:
        kind, *options = name.split(":")
        args.append(f"--trainer.callbacks+=lit_bioplaus.analysis.{kind}")
        args += [f"--trainer.callbacks.{option}" for option in options]
    return args


def assert_pngs(folder: Path, names: list[str], epochs: list[int]) -> None:
    """``<name>_epoch{E}.png`` for every name and epoch, readable RGB images, and no
    temporary files left."""
    expected = {f"{name}_epoch{epoch}.png" for name in names for epoch in epochs}
    assert {path.name for path in folder.iterdir()} == expected
    for name in expected:
        with Image.open(folder / name) as image:
            assert image.mode == "RGB" and min(image.size) > 20
        assert not stale_temporaries(folder / name)


FITS = {  # config: (callbacks, PNG names, metrics)
    "quickstart_ch.yaml": (
        ["ModelCKA:reference=bp_mlp128_digits", "Embedding:every_n_epochs=1", "ReceptiveFields"],
        ["model_cka", "embedding", "receptive_fields"],
        ["analysis/model_cka_h1", "analysis/model_cka_output"],
    ),
    "quickstart_ccl.yaml": (
        ["StreamCKA", "WeightAlignment", "ReceptiveFields"],
        ["stream_cka", "weight_alignment", "receptive_fields"],
        [f"analysis/stream_cka_{point}" for point in ("input", "h1", "h2", "output")],
    ),
    "quickstart_guided.yaml": (
        ["SubnetworkMaps:every_n_epochs=1", "ReceptiveFields"],
        ["subnetworks", "receptive_fields"],
        ["subnet/active_layer0_task0", "subnet/cosine_layer0_tasks01"],
    ),
}


@pytest.mark.parametrize("config", list(FITS))
def test_callbacks_write_their_pngs_in_a_tiny_fit(config, tmp_path):
    names, pngs, metrics = FITS[config]
    cli = fit(config, tmp_path, *callbacks(*names))
    assert_pngs(Path(cli.trainer.log_dir) / "analysis", pngs, [0, 1])
    for metric in metrics:
        value = cli.trainer.callback_metrics[metric].item()
        assert 0 <= value <= 1 + 1e-6, (metric, value)


@pytest.mark.parametrize("config", list(FITS))
def test_callbacks_do_not_change_training(config, tmp_path):
    """The analyses only read: a fit with them ends with the parameters and buffers of the
    fit without them (their validation subset is drawn without consuming the fit's RNG)."""
    names = FITS[config][0]
    plain = fit(config, tmp_path / "plain").model.state_dict()
    analysed = fit(config, tmp_path / "analysed", *callbacks(*names)).model.state_dict()
    assert plain.keys() == analysed.keys()
    for name, value in plain.items():
        assert torch.equal(analysed[name], value), name


def test_history_is_kept_across_a_resume_and_a_checkpoint_can_be_the_reference(tmp_path):
    first = fit("quickstart_ccl.yaml", tmp_path, *callbacks("WeightAlignment", "StreamCKA"), epochs=1)
    checkpoint = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]
    assert set(saved["WeightAlignment"]["records"]) == set(saved["StreamCKA"]["records"]) == {0}
    second = fit(
        "quickstart_ccl.yaml", tmp_path, *callbacks("WeightAlignment", "StreamCKA", f"ModelCKA:reference={checkpoint}"),
        "--ckpt_path", str(checkpoint),
    )  # fmt: skip
    alignment, stream = (c for c in second.trainer.callbacks if isinstance(c, (WeightAlignment, StreamCKA)))
    assert set(alignment.history.records) == set(stream.history.records) == {0, 1}
    assert alignment.history.records[0] == saved["WeightAlignment"]["records"][0]
    assert 0 <= second.trainer.callback_metrics["analysis/model_cka_h1"].item() <= 1
    assert_pngs(Path(second.trainer.log_dir) / "analysis", ["weight_alignment", "stream_cka", "model_cka"], [1])


@pytest.mark.parametrize(
    ("config", "names", "message"),
    [
        ("quickstart_ch.yaml", ["WeightAlignment"], "WeightAlignment needs feedback weights of their own"),
        ("quickstart_ch.yaml", ["StreamCKA"], r"it needs a module with a feedback network \(CounterCurrent\)"),
        ("quickstart.yaml", ["SubnetworkMaps"], "SubnetworkMaps needs a guided module, got BackProp"),
        ("quickstart_ch.yaml", ["ModelCKA:reference=bp_mlp500_fashion_mnist"], r"reads inputs \(1, 28, 28\)"),
        ("quickstart_ch.yaml", ["ModelCKA:reference=no_such_model"], "neither a checkpoint file nor a zoo entry"),
        ("quickstart_ch.yaml", ["Embedding:task=0"], "task applies to guided modules, not to CounterHebb"),
        ("quickstart_guided.yaml", ["Embedding"], r"Embedding on a guided module needs task in \[0, 2\)"),
        (
            "quickstart_guided.yaml",
            ["Embedding:task=1"],
            "needs a validation split of at least 2 images; the data has 0",
        ),
    ],
)
def test_an_analysis_that_cannot_apply_stops_the_fit_at_its_start(config, names, message, tmp_path):
    with pytest.raises(ValueError, match=message) as error:
        fit(config, tmp_path, *callbacks(*names))
    assert "\n" not in str(error.value)


# --- W&B and the cost benchmark ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("data"))


SHIPPED = {  # config: (epochs until every callback has drawn, its figures; W&B key if not analysis/<figure>)
    "ch/mlp500_fashion_mnist_asym.yaml": (1, ["weight_alignment", "model_cka", "receptive_fields"]),
    "ch/mlp500_fashion_mnist_sym.yaml": (25, ["model_cka", "embedding", "receptive_fields"]),
    "ccl/mlp256x6_fashion_mnist.yaml": (10, ["stream_cka", "weight_alignment", "model_cka"]),
    "ch/multi_fashion_mnist_sym.yaml": (3, ["subnetworks:subnet/mask_cosine", "receptive_fields"]),
}


@pytest.mark.parametrize("config", list(SHIPPED))
def test_wandb_offline_run_of_a_shipped_config_holds_the_images(config, wandb, data_root, tmp_path):  # noqa: F811
    epochs, names = SHIPPED[config]
    main([
        "fit", "--config", str(CONFIGS / config), "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
        "false", "--test_after_fit", "false", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.offline", "true",
        "--trainer.logger.init_args.project", "lit-bioplaus-tests", "--trainer.default_root_dir", str(tmp_path),
        "--data.init_args.data_dir", str(data_root), "--data.init_args.batch_size", "8",
    ])  # fmt: skip
    wandb.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run / "files" / "media" / "images"
    for figure in names:
        name, _, key = figure.partition(":")
        key = key or f"analysis/{name}"
        assert list(media.glob(f"{key}_*.png")), sorted(str(p.relative_to(media)) for p in media.rglob("*.png"))
        assert list((run / "files" / "analysis").glob(f"{name}_epoch*.png")), name  # the run's own folder
    assert not (tmp_path / "analysis").exists()  # not the save_dir every W&B run shares


def test_cost_benchmark_prints_a_row_per_callback(data_root, capsys):
    analysis_cost.main([
        "--recipes", "configs/fa/mlp500_fashion_mnist.yaml", "--train-batches", "1", "--data-dir", str(data_root),
    ])  # fmt: skip
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| configs/")]
    assert [row.split(" | ")[2] for row in rows] == ["WeightAlignment", "ReceptiveFields", "**all**"]
