"""The papers' numbers that ``lit_bioplaus.report`` sets beside ours, transcribed from the
papers (a Python module rather than a data file, so that it ships without package-data).

Each ``PaperRow`` is one method of one table as the paper prints it, with the recipe
config (``configs/...``) that reproduces it on our side: the report finds our number in
the zoo entry made from that recipe, or in a run folder logged by it. ``paper`` is the number as
the paper prints it, in the table's unit (percent test accuracy here), and ``spread`` what
it prints after it (standard deviation or 95% confidence interval, see the table's
``source``); ``None`` where the paper has no such number (``paper_note`` then says why).

Sources:

* Counter-Hebb: R. Abel, S. Ullman, "Biologically-Motivated Learning Model for Instructed
  Visual Processing", NeurIPS 2024 (Tables 1-4; ``shared/papers/counter-hebb-instructed-vision.txt``,
  ``shared/docs/ALGORITHMS.md`` sections 1, 4.2, 4.3 and 4.5).
* Counter-Current: C.-H. Kao, B. Hariharan, "Counter-Current Learning: A Biologically
  Plausible Dual Network Approach for Deep Learning", NeurIPS 2024, Table 1 (our copy of the
  paper is a summary without the numbers: they are those of ``ALGORITHMS.md`` section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

NO_NUMBER = "\u2013"
"""An en dash: the paper has no number for this row (as in the README's tables)."""

CH_PAPER = 'Abel & Ullman, "Biologically-Motivated Learning Model for Instructed Visual Processing", NeurIPS 2024'
CCL_PAPER = (
    'Kao & Hariharan, "Counter-Current Learning: A Biologically Plausible Dual Network Approach for Deep Learning", '
    "NeurIPS 2024"
)


@dataclass(frozen=True)
class PaperRow:
    """One method of a paper's table and the recipe that reproduces it here."""

    method: str
    """Short name shown in the report (``CH sym``)."""
    label: str
    """The row's label as the paper prints it (``CH Sym Init``)."""
    paper: str | None
    """The number as the paper prints it (``"89.99"``), None where it has none."""
    spread: str | None = None
    """What the paper prints after it (``"0.2"``: std or 95% CI, see the table's ``source``)."""
    recipe: str | None = None
    """The recipe config (``configs/...``), ``None`` when the project has none."""
    paper_note: str = ""

    @property
    def paper_text(self) -> str:
        """``89.99 ± 0.2`` as printed (``NO_NUMBER`` when the paper has no number)."""
        if self.paper is None:
            return NO_NUMBER
        return self.paper if self.spread is None else f"{self.paper} ± {self.spread}"

    @property
    def value(self) -> float | None:
        return None if self.paper is None else float(self.paper)

    @property
    def spread_value(self) -> float | None:
        return None if self.spread is None else float(self.spread)


@dataclass(frozen=True)
class PaperTable:
    """One table (or one column of a table) of a paper."""

    key: str
    title: str
    source: str
    """Paper and table, and what the numbers are (mean ± std over how many runs)."""
    rows: tuple[PaperRow, ...]
    metric: str = "test/acc"
    """Our metric, as logged and as the zoo manifest records it (a fraction: shown in %)."""
    note: str = ""


CH_FASHION_MNIST = PaperTable(
    key="ch_fashion_mnist",
    title="Counter-Hebb, unguided MLP 784-500-10 ReLU, Fashion-MNIST, cross-entropy",
    source=f"{CH_PAPER}, Table 1 (Fashion MNIST column): test accuracy (%), mean ± std over 10 runs",
    rows=(
        PaperRow(
            "BP",
            "BP (ours)",
            "89.94",
            "0.2",
            "configs/bp/mlp500_fashion_mnist.yaml",
            "the paper's own BP run; the BP of Bozkurt et al. (2024) in the same table: 89.41 ± 0.2",
        ),
        PaperRow("CH sym", "CH Sym Init", "89.99", "0.2", "configs/ch/mlp500_fashion_mnist_sym.yaml"),
        PaperRow("CH asym", "CH Asym Init", "89.27", "0.1", "configs/ch/mlp500_fashion_mnist_asym.yaml"),
        PaperRow(
            "FA",
            "FA [2016]",
            "88.38",
            "0.9",
            "configs/fa/mlp500_fashion_mnist.yaml",
            "taken by the paper from Bozkurt et al. (2024)",
        ),
        PaperRow("DFA", "DFA", None, None, "configs/dfa/mlp500_fashion_mnist.yaml", "not in the paper"),
    ),
    note="Recipe: Adam 1e-4, batch 20, 50 epochs, learning rate x0.95 per epoch, no regularisation.",
)

CH_FASHION_MNIST_MSE = PaperTable(
    key="ch_fashion_mnist_mse",
    title="Counter-Hebb, unguided MLP 784-500-10 ReLU, Fashion-MNIST, MSE loss",
    source=f"{CH_PAPER}, Table 3 (Fashion MNIST column, MSE rows): test accuracy (%), mean ± std over 10 runs",
    rows=(
        PaperRow("BP", "BP (ours) (MSE loss)", "90.16", "0.2", "configs/bp/mlp500_fashion_mnist_mse.yaml"),
        PaperRow("CH sym", "CH Sym Init (MSE loss)", "90.13", "0.2", "configs/ch/mlp500_fashion_mnist_sym_mse.yaml"),
        PaperRow("CH asym", "CH Asym Init (MSE loss)", "89.54", "0.2", "configs/ch/mlp500_fashion_mnist_asym_mse.yaml"),
        PaperRow(
            "FA",
            "FA [2016] (MSE loss)",
            "88.72",
            "0.5",
            "configs/fa/mlp500_fashion_mnist_mse.yaml",
            "taken by the paper from Bozkurt et al. (2024)",
        ),
    ),
)

CCL_FASHION_MNIST = PaperTable(
    key="ccl_fashion_mnist",
    title="Counter-Current, MLP 784-256x5-10 ELU, Fashion-MNIST",
    source=f"{CCL_PAPER}, Table 1 (FashionMNIST): test accuracy (%), 5 seeds (spread printed for CCL only)",
    rows=(
        PaperRow("BP", "BP", "89.58", None, "configs/bp/mlp256x6_fashion_mnist.yaml"),
        PaperRow("FA", "FA", "87.38", None, None, "no FA recipe on this network yet"),
        PaperRow("CCL", "CCL", "88.58", "0.29", "configs/ccl/mlp256x6_fashion_mnist.yaml"),
    ),
    note="Recipe: SGD lr 1 for both networks, gradient-norm clip 1, batch 256, 100 epochs, "
    "90/10 train/val split, the best-validation epoch tested.",
)

CH_MULTI_MNIST = PaperTable(
    key="ch_multi_mnist",
    title="Counter-Hebb, guided Multi-MNIST (two tasks: left / right digit)",
    source=f"{CH_PAPER}, Table 2 (Multi-MNIST column): mean task test accuracy (%), mean ± 95% CI over 10 runs",
    rows=(
        PaperRow("CH sym", "CH Sym Init", "94.20", "0.30", "configs/ch/multi_mnist_sym.yaml"),
        PaperRow(
            "CH asym",
            "CH Asym Init",
            "88.92",
            "2.15",
            "configs/ch/multi_mnist_asym_official_init.yaml",
            "with the official code's TD initialisation, the one behind the paper's number",
        ),
        PaperRow(
            "CH asym (default TD init)",
            "CH Asym Init",
            "88.92",
            "2.15",
            "configs/ch/multi_mnist_asym.yaml",
            "the paper's number is for the official code's TD initialisation",
        ),
        PaperRow(
            "BP (same guided net)",
            "",
            None,
            None,
            "configs/bp/multi_mnist.yaml",
            "the paper's baselines are multi-task BP methods on other networks (Kurin et al.): 93.47-94.87",
        ),
    ),
    note="Recipe: MultiMNISTNet, 100 channels, Adam 5e-4, x0.95 per epoch, batch 64, 100 epochs, last epoch tested.",
)

CH_MULTI_FASHION_MNIST = PaperTable(
    key="ch_multi_fashion_mnist",
    title="Counter-Hebb, guided Multi-Fashion-MNIST (the Multi-MNIST generator on Fashion-MNIST)",
    source=f"no published numbers: {CH_PAPER} reports Multi-MNIST only (Table 2); compare CH with its BP twin",
    rows=(
        PaperRow("CH sym", "", None, None, "configs/ch/multi_fashion_mnist_sym.yaml"),
        PaperRow("CH asym", "", None, None, "configs/ch/multi_fashion_mnist_asym.yaml"),
        PaperRow(
            "CH asym (official TD init)", "", None, None, "configs/ch/multi_fashion_mnist_asym_official_init.yaml"
        ),
        PaperRow("FA", "", None, None, "configs/fa/multi_fashion_mnist.yaml"),
        PaperRow("BP (same guided net)", "", None, None, "configs/bp/multi_fashion_mnist.yaml"),
    ),
    note="Recipe: MultiMNISTNet with 32 channels, 10 epochs (the Multi-MNIST recipe otherwise).",
)

CH_CELEBA = PaperTable(
    key="ch_celeba",
    title="Counter-Hebb, guided CelebA (40 binary attribute tasks), ResNet-18",
    source=f"{CH_PAPER}, Table 4: mean task test accuracy (%), mean ± 95% CI over 5 runs",
    rows=(
        PaperRow("CH sym", "symmetric weights", "89.51", "0.21", "configs/ch/celeba_resnet18_sym.yaml"),
        PaperRow(
            "CH sym, multi decoder", "multi-decoders", "89.69", "0.12", "configs/ch/celeba_resnet18_sym_multi.yaml"
        ),
        PaperRow("CH asym", "asymmetric weights", "79.25", "1.63", "configs/ch/celeba_resnet18_asym.yaml"),
        PaperRow(
            "BP (same guided net)",
            "",
            None,
            None,
            "configs/bp/celeba_resnet18.yaml",
            "the paper's baselines (Table 2, Kurin et al.): 90.22-90.99",
        ),
    ),
    note="The official configs train these networks with autograd (ALGORITHMS.md 4.3): read the paper's numbers "
    "as backprop through the guided network.",
)

PAPER_TABLES: tuple[PaperTable, ...] = (
    CH_FASHION_MNIST,
    CH_FASHION_MNIST_MSE,
    CCL_FASHION_MNIST,
    CH_MULTI_MNIST,
    CH_MULTI_FASHION_MNIST,
    CH_CELEBA,
)
"""Every table the report prints, in order."""
