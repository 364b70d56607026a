"""Analysis callbacks: what a network has learned, drawn during training.

Each callback runs at the end of every ``every_n_epochs``-th training epoch, on rank 0, with
the module in eval mode and without autograd, and publishes one figure: to every W&B logger
(``WandbLogger.log_image``) and TensorBoard logger of the run under ``analysis/<name>``, and
always as ``analysis/<name>_epoch{E}.png`` in the run folder (``trainer.log_dir``, else
``default_root_dir``), written atomically. The data-dependent ones read a fixed validation
subset: the first ``num_samples`` images of the validation split, drawn once at fit start.

* ``WeightAlignment``: per layer, the angle between the forward weights ``W`` and the
  feedback weights ``B`` (``W`` against ``B^T`` in the papers' notation) and ``||B|| / ||W||``,
  as curves over the epochs;
* ``StreamCKA``: linear CKA between the forward and the feedback activities at every learning
  point of Counter-Current learning, as curves over the epochs;
* ``ModelCKA``: linear CKA between every layer of the model and every layer of a reference
  (e.g. the BP twin, by zoo name or checkpoint path), as a heat map;
* ``Embedding``: a t-SNE embedding of every layer's representation, coloured by class;
* ``ReceptiveFields``: the first layer's units as images (MLP: rows of the weight reshaped to
  the input image; conv: the kernels);
* ``SubnetworkMaps``: ``lit_bioplaus.subnetworks.SubnetworkMonitor`` whose heat map of the
  tasks' mask cosines is also always a PNG in the run folder.

In a config (``--trainer.callbacks+=lit_bioplaus.analysis.WeightAlignment`` on the command line)::

    trainer:
      callbacks:
        - class_path: lit_bioplaus.analysis.ModelCKA
          init_args:
            reference: bp_mlp500_fashion_mnist

A callback that cannot apply to the module (feedback weights on a network that shares them,
stream CKA without a feedback network, ...) stops the fit at its start with a ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.manifold import TSNE
from torch import Tensor

from lit_bioplaus import zoo
from lit_bioplaus.algorithms import BioplausModule, CounterCurrent, GuidedLearning
from lit_bioplaus.algorithms.base import check_range, log_image
from lit_bioplaus.algorithms.counter_hebb import trace_up
from lit_bioplaus.io import atomic_write
from lit_bioplaus.nn import TwoStreamActivation, TwoStreamConv2d, TwoStreamLinear, TwoStreamNetwork
from lit_bioplaus.subnetworks import SubnetworkMonitor

__all__ = [
    "AnalysisCallback",
    "Embedding",
    "ModelCKA",
    "ReceptiveFields",
    "StreamCKA",
    "SubnetworkMaps",
    "WeightAlignment",
    "cka_matrix",
    "first_layer_kernels",
    "kernel_grid",
    "layer_representations",
    "linear_cka",
    "stream_representations",
    "tsne_embedding",
    "weight_alignment",
]


# --- measures ---------------------------------------------------------------------------------
def centred_gram(x: Tensor) -> Tensor:
    """``(n, ...) -> (n, n)``: ``K = X_c X_c^T`` in float64, ``X_c`` the rows of ``x``
    (flattened) minus their mean (so ``K = H X X^T H`` with ``H = I - 11^T / n``)."""
    flat = x.flatten(1).double()
    flat = flat - flat.mean(dim=0, keepdim=True)
    return flat @ flat.T


def cka_matrix(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """``(len(xs), len(ys))`` linear CKA between every pair of representations of the same
    ``n`` samples, each ``(n, ...)`` (flattened to ``(n, p)``)::

        CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)
                  = <K, L>_F / (||K||_F ||L||_F),   K = X_c X_c^T, L = Y_c Y_c^T

    computed in the second form: one centred Gram matrix per representation (``O(n^2 p)``),
    then every pair as one product of the unit-norm flattened Grams. Invariant to orthogonal
    maps and isotropic scaling of either side and to adding a constant; NaN for a constant
    representation."""

    def unit_grams(representations: Sequence[Tensor]) -> Tensor:
        grams = torch.stack([centred_gram(r).flatten() for r in representations])
        return grams / grams.norm(dim=1, keepdim=True)

    return unit_grams(xs) @ unit_grams(ys).T


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA of ``x`` ``(n, p...)`` and ``y`` ``(n, q...)`` (``cka_matrix``): a float64 scalar."""
    return cka_matrix([x], [y])[0, 0]


def weight_alignment(network: TwoStreamNetwork) -> dict[int, tuple[Tensor, Tensor]]:
    """Per weighted layer ``i`` (position in ``network.weighted_layers()``, as in
    ``align/angle_{i}``) with a feedback weight of its own: ``(angle, norm_ratio)`` from
    ``WeightedTwoStreamLayer.alignment`` (degrees between ``W`` and ``B^T``; ``||B|| / ||W||``)."""
    return {
        index: layer.alignment()
        for index, layer in enumerate(network.weighted_layers())
        if layer.weight_mode != "shared"
    }


def check_task(model: BioplausModule, task: int | None, who: str) -> None:
    """Refuse a ``task`` that does not fit ``model``: a guided module needs one (its
    representation depends on the instruction), an unguided one has none."""
    if not isinstance(model, GuidedLearning):
        if task is not None:
            raise ValueError(f"{who}: task applies to guided modules, not to {type(model).__name__}")
        return
    if task is None or not 0 <= task < model.num_tasks:
        raise ValueError(
            f"{who} on a guided module needs task in [0, {model.num_tasks}): the instruction whose "
            f"sub-network it reads, got {task}"
        )


def layer_representations(model: BioplausModule, x: Tensor, task: int | None = None) -> dict[str, Tensor]:
    """The representation of ``x`` ``(n, *input_shape)`` at every hidden layer, the output of
    each activation of the network's sequence (``h1`` ... ``hL``), and the network output
    (``output``), bottom to top; for a guided module under instruction ``task`` (pass 2 gated
    by the task's sub-network). Each value is ``(n, *shape)``."""
    check_task(model, task, "layer_representations")
    gates = None
    if isinstance(model, GuidedLearning):
        gates = {name: mask[task : task + 1] for name, mask in model.task_gates().items()}
    trace = trace_up(model.network, x, gates)
    hidden = [index for index, module in enumerate(model.network) if isinstance(module, TwoStreamActivation)]
    return {**{f"h{k + 1}": trace.outputs[index] for k, index in enumerate(hidden)}, "output": trace.logits}


def stream_representations(model: CounterCurrent, x: Tensor, labels: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """``(a, b)``: Counter-Current's forward activities ``a_l`` of ``x`` and feedback
    activities ``b_l`` of each sample's target (its class one-hot, or for an autoencoder the
    image), at every learning point (input, each activation, output), each ``(n, ...)``."""
    top = x if model.task == "autoencoder" else F.one_hot(labels, model.num_classes).to(x.dtype)
    return model.forward_activities(x), model.feedback_activities(top)


def tsne_embedding(features: Tensor, perplexity: float = 30.0) -> Tensor:
    """``(n, ...) -> (n, 2)`` t-SNE embedding of the flattened rows: scikit-learn's
    ``TSNE`` with PCA initialisation and ``random_state=0`` (the same embedding every call);
    the perplexity capped at ``(n - 1) / 3`` for small ``n``."""
    n = features.shape[0]
    tsne = TSNE(2, perplexity=min(perplexity, (n - 1) / 3), init="pca", random_state=0)
    return torch.from_numpy(tsne.fit_transform(features.flatten(1).double().cpu().numpy()))


def first_layer_kernels(model: BioplausModule) -> Tensor:
    """The first weighted layer's units as images ``(units, C, h, w)``: for a linear layer the
    rows of ``W`` reshaped to the input image ``(C, H, W)``, for a convolution its kernels.

    Raises:
        ValueError: the first weighted layer does not read the input image, or ``C`` is not
            1 or 3 (not an image).
    """
    layer = model.network.weighted_layers()[0]
    channels = model.input_shape[0]
    if isinstance(layer, TwoStreamLinear) and layer.in_features == math.prod(model.input_shape):
        kernels = layer.weight.view(layer.out_features, *model.input_shape)
    elif isinstance(layer, TwoStreamConv2d) and layer.in_channels == channels:
        kernels = layer.weight
    else:
        raise ValueError(f"the first weighted layer {layer!r} does not read the input image {model.input_shape}")
    if kernels.shape[1] not in (1, 3):
        raise ValueError(f"kernels with {kernels.shape[1]} input channels are not images (1 or 3 channels)")
    return kernels.detach()


def kernel_grid(kernels: Tensor, min_size: int = 28) -> Tensor:
    """``(K, C, h, w)`` kernels (``C`` = 1 or 3) as one ``(3, H, W)`` image in ``[0, 1]``:
    each min-max scaled on its own, enlarged (nearest) to at least ``min_size`` pixels, in a
    grid of ``ceil(sqrt(K))`` columns."""
    scale = max(1, math.ceil(min_size / kernels.shape[-1]))
    tiles = F.interpolate(kernels.float().cpu(), scale_factor=scale, mode="nearest")
    columns = math.ceil(math.sqrt(len(tiles)))
    return torchvision.utils.make_grid(tiles, nrow=columns, padding=2, normalize=True, scale_each=True, pad_value=1.0)


# --- figures ----------------------------------------------------------------------------------
def figure_image(figure: Figure) -> Tensor:
    """A matplotlib figure rendered as a ``(3, H, W)`` float image in ``[0, 1]``."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = torch.from_numpy(np.asarray(canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 255


def curves_image(epochs: Sequence[int], quantities: dict[str, Tensor], layers: Sequence[str]) -> Tensor:
    """One panel per quantity (``(E, L)`` values over ``E`` epochs), one line per layer."""
    figure = Figure(figsize=(4.5 * len(quantities), 3.5), layout="constrained")
    panels = figure.subplots(1, len(quantities), squeeze=False)[0]
    for axes, (title, values) in zip(panels, quantities.items(), strict=True):
        for column, layer in enumerate(layers):
            axes.plot(epochs, values[:, column].numpy(), marker="o", markersize=3, label=layer)
        axes.set(title=title, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize="small")
    return figure_image(figure)


def matrix_image(matrix: Tensor, rows: Sequence[str], columns: Sequence[str], title: str, xlabel: str) -> Tensor:
    """A ``(R, C)`` matrix of values in ``[0, 1]`` as an annotated heat map."""
    figure = Figure(figsize=(max(4.0, 2.0 + 0.7 * len(columns)), max(3.2, 1.6 + 0.6 * len(rows))), layout="constrained")
    axes = figure.subplots()
    shown = axes.imshow(matrix.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    for (row, column), value in np.ndenumerate(matrix.numpy()):
        axes.text(column, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    axes.set(xticks=range(len(columns)), xticklabels=columns, yticks=range(len(rows)), yticklabels=rows)
    axes.set(title=title, xlabel=xlabel, ylabel="model")
    figure.colorbar(shown, ax=axes)
    return figure_image(figure)


def scatter_image(points: dict[str, Tensor], labels: Tensor, num_classes: int, title: str) -> Tensor:
    """One panel per ``(n, 2)`` embedding, the points coloured by their ``(n,)`` class in
    ``[0, num_classes)`` (a qualitative colour map up to 10 classes, a continuous one beyond)."""
    colours = {"cmap": "tab10" if num_classes <= 10 else "turbo", "vmin": -0.5, "vmax": max(num_classes, 2) - 0.5}
    columns = min(4, len(points))
    rows = math.ceil(len(points) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows + 0.6), layout="constrained")
    figure.suptitle(title)
    panels = figure.subplots(rows, columns, squeeze=False).flatten()
    for axes, (name, xy) in zip(panels[: len(points)], points.items(), strict=True):
        shown = axes.scatter(*xy.T.numpy(), c=labels.numpy(), s=4, **colours)
        axes.set(title=name, xticks=[], yticks=[])
    for axes in panels[len(points) :]:
        axes.set_axis_off()
    figure.legend(*shown.legend_elements(), loc="outside right upper", title="class", fontsize="small")
    return figure_image(figure)


def write_png(path: Path, image: Tensor) -> Path:
    """A ``(3, H, W)`` image in ``[0, 1]`` as a PNG at ``path``, atomically (``atomic_write``)."""
    return atomic_write(path, lambda temporary: torchvision.utils.save_image(image, temporary, format="png"))


def run_folder(trainer: L.Trainer) -> Path:
    """``analysis/`` in the run's own folder: the W&B run's files folder (uploaded with the
    run; ``trainer.log_dir`` would be the ``save_dir`` every W&B run shares), else
    ``trainer.log_dir`` (the CSV / TensorBoard version folder) or ``default_root_dir``. A
    collective: call it on every rank (only rank 0 writes there)."""
    folder = Path(trainer.log_dir or trainer.default_root_dir)
    wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if wandb_loggers and trainer.is_global_zero:
        folder = Path(wandb_loggers[0].experiment.dir)
    return folder / "analysis"


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside, the module's mode restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


# --- callbacks --------------------------------------------------------------------------------
class AnalysisCallback(L.Callback):
    """Base class: every ``every_n_epochs`` training epochs (at the epoch's end, on rank 0, in
    eval mode without autograd) ``render`` a figure and publish it to the W&B and TensorBoard
    loggers as ``analysis/<name>`` and as ``analysis/<name>_epoch{E}.png`` in the run folder.
    Subclasses set ``name`` and implement ``render``, and refuse modules they cannot analyse
    in ``check``.

    Args:
        every_n_epochs: how often.
    """

    name: ClassVar[str]

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.folder: Path | None = None

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise ``ValueError`` in one line if this analysis cannot apply to ``pl_module``."""
        if not isinstance(pl_module, BioplausModule):
            raise ValueError(f"{type(self).__name__} analyses lit-bioplaus modules, got {type(pl_module).__name__}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer, pl_module)
        self.folder = run_folder(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        if not bool(torch.stack([p.isfinite().all() for p in pl_module.parameters()]).all()):
            # diverged: the module's own check at this epoch's end stops every process
            rank_zero_warn(f"{type(self).__name__}: parameters not finite, no figure this epoch")
            return
        with evaluating(pl_module):
            image, caption = self.render(trainer, pl_module)
        self.publish(trainer, image, caption)

    def render(self, trainer: L.Trainer, pl_module: BioplausModule) -> tuple[Tensor, str]:
        """``(image, caption)``: the ``(3, H, W)`` figure in ``[0, 1]`` of this epoch."""
        raise NotImplementedError

    def publish(self, trainer: L.Trainer, image: Tensor, caption: str) -> None:
        """``image`` to the W&B / TensorBoard loggers and as this epoch's PNG in the run folder."""
        assert self.folder is not None, "on_fit_start has not run"
        epoch = trainer.current_epoch
        loggers = [logger for logger in trainer.loggers if isinstance(logger, (WandbLogger, TensorBoardLogger))]
        log_image(loggers, f"analysis/{self.name}", image, epoch, caption)
        write_png(self.folder / f"{self.name}_epoch{epoch}.png", image)


class EpochHistory:
    """Per-layer measures of every analysed epoch, ``epoch -> {quantity: [value per layer]}``,
    kept in the callback's ``state_dict`` (a resumed run keeps its curves; an epoch measured
    again replaces its entry)."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, list[float]]] = {}

    def add(self, epoch: int, measures: dict[str, Tensor]) -> None:
        """Record ``{quantity: (L,) values}`` for ``epoch``."""
        self.records[epoch] = {name: values.double().cpu().tolist() for name, values in measures.items()}

    def image(self, layers: Sequence[str]) -> Tensor:
        """Every quantity over the recorded epochs, one line per layer (``curves_image``)."""
        epochs = sorted(self.records)
        quantities = {
            name: torch.tensor([self.records[epoch][name] for epoch in epochs]) for name in self.records[epochs[-1]]
        }
        return curves_image(epochs, quantities, layers)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = {int(epoch): measures for epoch, measures in state_dict["records"].items()}


class KeepsHistory(L.Callback):
    """Mixin of the callbacks that draw curves over the epochs: their ``history``
    (``EpochHistory``) is their ``state_dict``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history = EpochHistory()

    def state_dict(self) -> dict[str, Any]:
        return self.history.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict)


class WeightAlignment(KeepsHistory, AnalysisCallback):
    """Per weighted layer with feedback weights of its own (``symmetric``, ``asymmetric``,
    ``fixed``): the angle between ``W`` and ``B^T`` and ``||B|| / ||W||``
    (``weight_alignment``), as curves over the epochs (``analysis/weight_alignment``; the
    history is in the callback's ``state_dict``). Data-free and cheap: every epoch by default.

    Args:
        every_n_epochs: how often.
    """

    name = "weight_alignment"

    def __init__(self, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().check(trainer, pl_module)
        if not weight_alignment(pl_module.network):
            raise ValueError(
                "WeightAlignment needs feedback weights of their own: every layer of this network shares "
                "them (weight_mode 'shared'), so the angle is 0"
            )

    def render(self, trainer: L.Trainer, pl_module: BioplausModule) -> tuple[Tensor, str]:
        alignment = weight_alignment(pl_module.network)
        angles, ratios = (torch.stack(values) for values in zip(*alignment.values(), strict=True))
        self.history.add(trainer.current_epoch, {"angle(W, B^T) (degrees)": angles, "||B|| / ||W||": ratios})
        caption = f"epoch {trainer.current_epoch}: forward / feedback weight alignment per weighted layer"
        return self.history.image([f"layer {index}" for index in alignment]), caption


class ProbeCallback(AnalysisCallback):
    """An analysis of a fixed validation subset: the first ``num_samples`` images of the
    DataModule's validation split (all of it when smaller), drawn once at fit start.

    Args:
        every_n_epochs: how often.
        num_samples: size of the subset (at least 2).
        task: guided modules only, the instruction whose sub-network (and labels) are read.
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 512, task: int | None = None) -> None:
        super().__init__(every_n_epochs)
        if num_samples < 2:
            raise ValueError(f"num_samples must be at least 2, got {num_samples}")
        self.num_samples = num_samples
        self.task = task
        self.inputs: Tensor | None = None
        self.labels: Tensor | None = None

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().check(trainer, pl_module)
        check_task(pl_module, self.task, type(self).__name__)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.inputs, self.labels = self.draw(trainer)

    def draw(self, trainer: L.Trainer) -> tuple[Tensor, Tensor]:
        """``(inputs (n, *input_shape), labels (n,))`` of the first ``n`` validation images
        (for multi-task data, the labels under ``task``)."""
        who = type(self).__name__
        if trainer.datamodule is None:
            raise ValueError(f"{who} reads the validation split of a LightningDataModule; the fit has none")
        loaders = trainer.datamodule.val_dataloader()
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        inputs, labels, count = [], [], 0
        for batch in loaders[0] if loaders else []:
            inputs.append(batch[0])
            labels.append(batch[1])
            count += len(batch[0])
            if count >= self.num_samples:
                break
        if count < 2:
            raise ValueError(f"{who} needs a validation split of at least 2 images; the data has {count}")
        label = torch.cat(labels)[: self.num_samples]
        return torch.cat(inputs)[: self.num_samples], label if self.task is None else label[:, self.task]


class StreamCKA(KeepsHistory, ProbeCallback):
    """Counter-Current learning: linear CKA between the forward activity ``a_l`` of each
    validation image and the feedback activity ``b_l`` of its target (class one-hot, or the
    image for an autoencoder) at every learning point (``stream_representations``), as
    curves over the epochs (``analysis/stream_cka``; history in the ``state_dict``) and
    logged as ``analysis/stream_cka_{point}``.

    Args:
        every_n_epochs: how often.
        num_samples: validation images.
    """

    name = "stream_cka"

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 512) -> None:
        super().__init__(every_n_epochs, num_samples)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().check(trainer, pl_module)
        if not isinstance(pl_module, CounterCurrent):
            raise ValueError(
                f"StreamCKA compares forward and feedback activities: it needs a module with a feedback network "
                f"(CounterCurrent), got {type(pl_module).__name__}"
            )

    def render(self, trainer: L.Trainer, pl_module: BioplausModule) -> tuple[Tensor, str]:
        assert isinstance(pl_module, CounterCurrent) and self.inputs is not None and self.labels is not None
        forward, feedback = stream_representations(
            pl_module, self.inputs.to(pl_module.device), self.labels.to(pl_module.device)
        )
        points = ["input", *(f"h{k}" for k in range(1, len(forward) - 1)), "output"]
        cka = cka_matrix(forward, feedback).diagonal()
        metrics = {f"analysis/stream_cka_{point}": value.float() for point, value in zip(points, cka, strict=True)}
        pl_module.log_dict(metrics, rank_zero_only=True)
        self.history.add(trainer.current_epoch, {"CKA(forward a_l, feedback b_l)": cka})
        return self.history.image(points), f"epoch {trainer.current_epoch}: forward / feedback CKA per learning point"


def load_reference(reference: str) -> BioplausModule:
    """A module in eval mode: the Lightning checkpoint at path ``reference``, or the zoo entry
    of that name (``zoo.load_pretrained``, fetched and verified)."""
    if Path(reference).is_file():
        return BioplausModule.load_from_checkpoint(reference, map_location="cpu").eval()
    if reference in zoo.list_models():
        return zoo.load_pretrained(reference)
    raise ValueError(
        f"reference {reference!r} is neither a checkpoint file nor a zoo entry (python -m lit_bioplaus.zoo lists them)"
    )


class ModelCKA(ProbeCallback):
    """Linear CKA between the representation of every layer of the model and of every layer
    of a reference model (``layer_representations``: the hidden layers and the output) on
    the same validation images, as a heat map (``analysis/model_cka``); the layers of the same
    name are also logged as ``analysis/model_cka_{layer}``.

    Args:
        reference: the reference model, a zoo entry (e.g. ``bp_mlp500_fashion_mnist``, the BP
            twin of the Counter-Hebb recipes) or a Lightning checkpoint path.
        every_n_epochs: how often.
        num_samples: validation images.
        task: guided modules only, the instruction both models run under.
    """

    name = "model_cka"

    def __init__(
        self, reference: str, every_n_epochs: int = 1, num_samples: int = 512, task: int | None = None
    ) -> None:
        super().__init__(every_n_epochs, num_samples, task)
        self.reference = reference
        self.reference_model: BioplausModule | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reference_model = load_reference(self.reference).to(pl_module.device)
        super().on_fit_start(trainer, pl_module)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().check(trainer, pl_module)
        assert self.reference_model is not None
        check_task(self.reference_model, self.task, f"ModelCKA's reference {self.reference}")
        if self.reference_model.input_shape != pl_module.input_shape:
            raise ValueError(
                f"ModelCKA's reference {self.reference} reads inputs {self.reference_model.input_shape}, "
                f"the model {pl_module.input_shape}"
            )

    def render(self, trainer: L.Trainer, pl_module: BioplausModule) -> tuple[Tensor, str]:
        assert self.reference_model is not None and self.inputs is not None
        x = self.inputs.to(pl_module.device)
        ours = layer_representations(pl_module, x, self.task)
        theirs = layer_representations(self.reference_model, x, self.task)
        cka = cka_matrix(list(ours.values()), list(theirs.values())).float().cpu()
        names = list(theirs)
        same = {name: cka[row, names.index(name)] for row, name in enumerate(ours) if name in theirs}
        pl_module.log_dict({f"analysis/model_cka_{name}": value for name, value in same.items()}, rank_zero_only=True)
        title = f"linear CKA, epoch {trainer.current_epoch}"
        caption = f"epoch {trainer.current_epoch}: linear CKA between the model's layers and {self.reference}'s"
        return matrix_image(cka, list(ours), names, title, xlabel=Path(self.reference).name), caption


class Embedding(ProbeCallback):
    """A 2-D t-SNE embedding (``tsne_embedding``) of every layer's representation of the
    validation images (``layer_representations``), coloured by class, one panel per layer
    (``analysis/embedding``). t-SNE costs seconds per layer on 512 images (one CPU thread:
    about a third of a Fashion-MNIST MLP epoch for two layers, ``benchmarks/analysis_cost.py``),
    so every 25 epochs by default.

    Args:
        every_n_epochs: how often.
        num_samples: validation images.
        task: guided modules only, the instruction whose sub-network and labels are read.
        perplexity: t-SNE's perplexity.
    """

    name = "embedding"

    def __init__(
        self,
        every_n_epochs: int = 25,
        num_samples: int = 512,
        task: int | None = None,
        perplexity: float = 30.0,
    ) -> None:
        super().__init__(every_n_epochs, num_samples, task)
        check_range("perplexity", perplexity, low=0, open_low=True)
        self.perplexity = perplexity

    def render(self, trainer: L.Trainer, pl_module: BioplausModule) -> tuple[Tensor, str]:
        assert self.inputs is not None and self.labels is not None
        representations = layer_representations(pl_module, self.inputs.to(pl_module.device), self.task)
        points = {name: tsne_embedding(r, self.perplexity) for name, r in representations.items()}
        title = f"t-SNE of each layer, epoch {trainer.current_epoch}"
        image = scatter_image(points, self.labels.cpu(), pl_module.num_classes, title)
        return image, f"epoch {trainer.current_epoch}: t-SNE per layer"


class ReceptiveFields(AnalysisCallback):
    """The first weighted layer's first ``max_units`` units as images
    (``first_layer_kernels``: MLP rows reshaped to the input image, conv kernels), each
    min-max scaled, in a grid (``analysis/receptive_fields``). Data-free and cheap.

    Args:
        every_n_epochs: how often.
        max_units: units shown.
    """

    name = "receptive_fields"

    def __init__(self, every_n_epochs: int = 1, max_units: int = 64) -> None:
        super().__init__(every_n_epochs)
        if max_units < 1:
            raise ValueError(f"max_units must be at least 1, got {max_units}")
        self.max_units = max_units

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().check(trainer, pl_module)
        first_layer_kernels(pl_module)

    def render(self, trainer: L.Trainer, pl_module: BioplausModule) -> tuple[Tensor, str]:
        kernels = first_layer_kernels(pl_module)[: self.max_units]
        return kernel_grid(kernels), f"epoch {trainer.current_epoch}: first-layer units (each min-max scaled)"


class SubnetworkMaps(SubnetworkMonitor):
    """``SubnetworkMonitor`` (per-task active fractions and mask cosines as scalars, the
    cosine heat map to the loggers) that also writes the heat map as
    ``analysis/subnetworks_epoch{E}.png`` in the run folder, whatever the loggers.

    Args:
        every_n_epochs: how often (the paper: every 3 epochs).
    """

    name = "subnetworks"

    def __init__(self, every_n_epochs: int = 3) -> None:
        super().__init__(every_n_epochs)
        self.folder: Path | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, GuidedLearning):
            raise ValueError(f"SubnetworkMaps needs a guided module, got {type(pl_module).__name__}")
        self.folder = run_folder(trainer)

    def publish(self, trainer: L.Trainer, image: Tensor, caption: str) -> None:
        """The monitor's heat map to the loggers and as this epoch's PNG in the run folder."""
        super().publish(trainer, image, caption)
        assert self.folder is not None, "on_fit_start has not run"
        write_png(self.folder / f"{self.name}_epoch{trainer.current_epoch}.png", image)
