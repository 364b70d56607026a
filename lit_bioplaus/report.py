"""Reproduction report: the papers' tables with the paper's number, ours, and the command
that produced ours, from the zoo manifest and from run folders; learning curves of runs.

``python -m lit_bioplaus.report [RUN_DIR ...] [--output DIR] [--curves [RUN_DIR ...]]``
prints the tables as markdown; ``--output DIR`` also writes ``report.md`` and
``report.png`` (paper vs ours, one panel per table) and, with ``--curves``,
``curves.png`` (train loss and validation accuracy per epoch of each run).

Where the numbers come from:

* **paper**: ``lit_bioplaus.paper_tables``, transcribed from the papers (table cited).
* **ours**: the measured test metric of every zoo entry (``zoo/manifest.json``, or
  ``$LIT_BIOPLAUS_ZOO``'s) whose ``recipe`` is the row's recipe, with the ``command`` the
  entry records; then every run folder given whose logger name is the recipe's (the
  recipes name their ``CSVLogger`` runs), with its last logged test metric and the command
  that reproduces it: ``lit-bioplaus fit --config RECIPE`` plus the recipe's settings the
  run changed (read from its ``hparams.yaml``). A row with neither says ``not run``.

A run folder is a Lightning ``CSVLogger`` version folder (``runs/NAME/version_0``:
``metrics.csv`` and ``hparams.yaml``), or a folder of such folders. One that cannot be read
is refused in one line (``ValueError``; ``main`` prints ``error: ...`` and exits with 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lit_bioplaus.io import atomic_write, atomic_write_text
from lit_bioplaus.paper_tables import NO_NUMBER, PAPER_TABLES, PaperRow, PaperTable
from lit_bioplaus.registry import manifest_path, read_manifest, resource_root

NOT_RUN = "not run"
REPORT_MD, REPORT_PNG, CURVES_PNG = "report.md", "report.png", "curves.png"
LOSS_KEYS = ("train/loss_epoch", "train/loss")
"""Per-epoch train loss as the rules log it (else ``train/loss_step``, averaged per epoch)."""


# ----------------------------------------------------------------------------- run folders


class _HparamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads the ``!!python/...`` tags Lightning writes into
    ``hparams.yaml`` (tuples, mostly) as plain data, constructing no Python object."""


def _python_tag(loader: _HparamsLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        return tuple(items) if suffix == "tuple" else items
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


_HparamsLoader.add_multi_constructor("tag:yaml.org,2002:python/", _python_tag)


@dataclass(frozen=True)
class Run:
    """One run folder: its logged metrics (rows of ``metrics.csv``) and hyper-parameters."""

    path: Path
    name: str
    """The run's logger name (``trainer.logger.init_args.name``), else its folder's."""
    hparams: dict[str, Any]
    rows: tuple[dict[str, str], ...]

    @property
    def label(self) -> str:
        return f"{self.name}/{self.path.name}" if self.path.name.startswith("version_") else self.name

    def columns(self) -> set[str]:
        return {key for row in self.rows for key, value in row.items() if value not in (None, "")}

    def last(self, key: str) -> float | None:
        """The last value logged under ``key``, None if there is none."""
        values = [float(row[key]) for row in self.rows if row.get(key) not in (None, "")]
        return values[-1] if values else None

    def per_epoch(self, key: str) -> tuple[list[int], list[float]]:
        """Epochs (from 1) and the mean of ``key``'s values logged in each."""
        sums: dict[int, list[float]] = {}
        for row in self.rows:
            if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                sums.setdefault(int(float(row["epoch"])), []).append(float(row[key]))
        epochs = sorted(sums)
        return [epoch + 1 for epoch in epochs], [sum(sums[epoch]) / len(sums[epoch]) for epoch in epochs]

    def train_loss(self) -> tuple[str, list[int], list[float]]:
        columns = self.columns()
        key = next((key for key in LOSS_KEYS if key in columns), "train/loss_step")
        return (key, *self.per_epoch(key))


def read_run(path: str | Path) -> Run:
    """The run in ``path``, a CSVLogger version folder.

    Raises:
        ValueError: no such folder, no ``metrics.csv``, or one of its files unreadable.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"run folder {path}: {'not a folder' if path.exists() else 'no such folder'}")
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        raise ValueError(f"run folder {path}: no metrics.csv (give a CSVLogger run folder, e.g. runs/NAME/version_0)")
    try:
        with metrics.open(newline="") as f:
            rows = tuple(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"run folder {path}: cannot read metrics.csv ({err})") from None
    if not rows or "epoch" not in rows[0]:
        raise ValueError(f"run folder {path}: metrics.csv has no logged rows with an epoch column")
    for row in rows:
        for key, value in row.items():
            if key is None or value is None:
                raise ValueError(f"run folder {path}: metrics.csv is malformed (a row has more or fewer fields)")
            if value != "":
                try:
                    float(value)
                except ValueError:
                    raise ValueError(
                        f"run folder {path}: metrics.csv has a non-numeric {key} value {value!r}"
                    ) from None
    hparams = _read_hparams(path / "hparams.yaml")
    logger = _logger_config(hparams)
    name = str(logger.get("name") or (path.parent.name if path.name.startswith("version_") else path.name))
    return Run(path=path, name=name, hparams=hparams, rows=rows)


def _read_hparams(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        hparams = yaml.load(path.read_text(), Loader=_HparamsLoader)  # a SafeLoader: no Python objects
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        detail = f"{problem}, line {mark.line + 1}" if problem and mark else " ".join(str(err).split())
        raise ValueError(f"run folder {path.parent}: hparams.yaml is not readable YAML ({detail})") from None
    if hparams is None:
        return {}
    if not isinstance(hparams, dict):
        raise ValueError(f"run folder {path.parent}: hparams.yaml is not a mapping of hyper-parameters")
    return hparams


def _logger_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ``init_args`` of a config's (first) logger, ``{}`` without one."""
    logger = (config.get("trainer") or {}).get("logger") if isinstance(config.get("trainer"), dict) else None
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    return (logger.get("init_args") or {}) if isinstance(logger, dict) else {}


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in ``paths``: each a run folder, or a folder holding run folders at any depth
    (``runs/NAME`` holding ``version_*``, or ``runs/`` holding those), which stands for all
    of them, in path order.

    Raises:
        ValueError: a path that is neither (see ``read_run``).
    """
    runs = []
    for path in map(Path, paths):
        below = sorted(m.parent for m in path.rglob("metrics.csv")) if path.is_dir() else []
        if below and not (path / "metrics.csv").exists():
            runs += [read_run(run) for run in below]
        else:
            runs.append(read_run(path))
    return runs


# ----------------------------------------------------------------------------- the tables


@dataclass(frozen=True)
class Result:
    """One number of ours: the metric as recorded (a fraction) and where it comes from."""

    value: float | None
    """None: the run logged no test metric."""
    command: str
    source: str
    """``zoo `NAME``` or ``run `PATH```."""


@dataclass(frozen=True)
class ReportRow:
    paper: PaperRow
    results: tuple[Result, ...]


@dataclass(frozen=True)
class ReportTable:
    table: PaperTable
    rows: tuple[ReportRow, ...]


def recipe_config(recipe: str) -> dict[str, Any]:
    """The recipe config file (packaged ``configs/...``), ``{}`` when it is not there."""
    path = resource_root() / recipe
    if not path.is_file():
        path = Path(recipe)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def recipe_run_name(recipe: str) -> str | None:
    """The logger name the recipe gives its runs (how run folders are matched to rows)."""
    name = _logger_config(recipe_config(recipe)).get("name")
    return str(name) if name else None


def build_report(
    manifest: dict[str, dict[str, Any]] | None = None,
    runs: Sequence[Run] = (),
    tables: Sequence[PaperTable] = PAPER_TABLES,
) -> list[ReportTable]:
    """The tables with our numbers: from ``manifest`` (default: the zoo's, see
    ``lit_bioplaus.registry``) and from ``runs``."""
    manifest = read_manifest() if manifest is None else manifest
    report = []
    for table in tables:
        rows = []
        for row in table.rows:
            results: list[Result] = []
            if row.recipe is not None:
                results += zoo_results(manifest, row.recipe, table.metric)
                results += run_results(runs, row.recipe, table.metric)
            rows.append(ReportRow(row, tuple(results)))
        report.append(ReportTable(table, tuple(rows)))
    return report


def zoo_results(manifest: dict[str, dict[str, Any]], recipe: str, metric: str) -> list[Result]:
    """Our numbers from the zoo entries trained by ``recipe``, by entry name."""
    results = []
    for name, entry in sorted(manifest.items()):
        if entry.get("recipe") != recipe or metric not in entry.get("metrics", {}):
            continue
        command = entry.get("command") or f"lit-bioplaus fit --config {recipe}"
        results.append(Result(float(entry["metrics"][metric]), command, f"zoo `{name}`"))
    return results


def run_results(runs: Sequence[Run], recipe: str, metric: str) -> list[Result]:
    """Our numbers from the runs logged under ``recipe``'s run name."""
    name = recipe_run_name(recipe)
    if name is None:
        return []
    return [Result(run.last(metric), run_command(run, recipe), f"run `{run.path}`") for run in runs if run.name == name]


def matched_runs(report: Sequence[ReportTable], runs: Sequence[Run]) -> set[Path]:
    names = {recipe_run_name(row.paper.recipe) for table in report for row in table.rows if row.paper.recipe}
    return {run.path for run in runs if run.name in names}


def run_command(run: Run, recipe: str) -> str:
    """``lit-bioplaus fit --config RECIPE`` and an option for each setting of the recipe
    that the run's ``hparams.yaml`` records with another value (settings the recipe leaves
    at their defaults are not compared; lists of objects, such as callbacks, neither)."""
    options = [
        f"--{key} {_cli_value(value)}"
        for key, value in _changed(recipe_config(recipe), run.hparams)
        if not key.startswith("trainer.logger")
    ]
    return " ".join([f"lit-bioplaus fit --config {recipe}", *options])


def _changed(recipe: Any, run: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(recipe, dict) and isinstance(run, dict):
        return [
            change
            for key, value in recipe.items()
            if key in run
            for change in _changed(value, run[key], f"{prefix}{key}.")
        ]
    key = prefix.rstrip(".")
    if isinstance(recipe, (list, tuple)) and any(isinstance(item, (dict, list, tuple)) for item in recipe):
        return []
    if key.endswith("class_path") and isinstance(recipe, str) and isinstance(run, str):
        same = recipe.rpartition(".")[2] == run.rpartition(".")[2]  # lit_bioplaus.X or lit_bioplaus.algorithms.X
    else:
        same = _plain(recipe) == _plain(run)
    return [] if same else [(key, run)]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, str):  # PyYAML reads 1e-4 as a string, jsonargparse as a number
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def _cli_value(value: Any) -> str:
    text = json.dumps(_plain(value)) if isinstance(value, (list, tuple, dict)) else str(value)
    return f"'{text}'" if any(char in text for char in " []{}'\"") else text


def format_percent(value: float) -> str:
    """A recorded fraction in percent, as recorded (``0.97493`` -> ``97.493``), rounded to
    two decimals when it has more (a run's float32 accuracy)."""
    percent = (Decimal(repr(float(value))) * 100).normalize()
    decimals = -percent.as_tuple().exponent
    if decimals > 3 or decimals < 2:
        percent = percent.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return format(percent, "f")


def ours_text(result: Result | None, metric: str) -> str:
    if result is None:
        return NOT_RUN
    return format_percent(result.value) if result.value is not None else f"no {metric} in metrics.csv"


def table_lines(report_table: ReportTable) -> list[str]:
    """One markdown table: a line per number of ours (``not run`` where there is none)."""
    table = report_table.table
    lines = [
        f"## {table.title}",
        "",
        f"Paper: {table.source}. Ours: `{table.metric}` (%), one line per zoo entry or run.",
        "",
        "| method | paper | ours | command |",
        "|---|---:|---:|---|",
    ]
    notes = []
    for row in report_table.rows:
        paper = row.paper.paper_text
        if row.paper.paper_note:
            notes.append(f"{row.paper.method}: {row.paper.paper_note}.")
            paper += f" [{len(notes)}]"
        for result in row.results or (None,):
            if result is not None:
                command = f"`{result.command}` ({result.source})"
            elif row.paper.recipe is not None:
                command = f"to run: `lit-bioplaus fit --config {row.paper.recipe}`"
            else:
                command = "no recipe"
            lines.append(f"| {row.paper.method} | {paper} | {ours_text(result, table.metric)} | {command} |")
    lines.append("")
    lines += [f"[{i}] {note}  " for i, note in enumerate(notes, 1)]
    if table.note:
        lines.append(table.note)
    return [*lines, ""] if notes or table.note else lines


def to_markdown(report: Sequence[ReportTable], runs: Sequence[Run] = ()) -> str:
    """The report as markdown: every table, then the runs that no table row matched."""
    lines = [
        "# Reproduction report",
        "",
        f"Ours: the measured test metrics of the zoo (`{manifest_path()}`)"
        + (f" and of {len(runs)} run folder(s)" if runs else "")
        + f"; `{NOT_RUN}`: no zoo entry or run of that recipe yet. `CKPT`: the checkpoint `fit` saved.",
        "",
    ]
    for report_table in report:
        lines += table_lines(report_table)
    matched = matched_runs(report, runs)
    others = [run for run in runs if run.path not in matched]
    if others:
        lines += ["## Runs in no paper table", "", "| run | test/acc | folder |", "|---|---:|---|"]
        for run in others:
            acc = run.last("test/acc")
            lines.append(f"| {run.label} | {format_percent(acc) if acc is not None else NO_NUMBER} | `{run.path}` |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def plot_report(report: Sequence[ReportTable], path: str | Path) -> Path:
    """``path``: a PNG with one panel per table, the paper's number (grey, with its spread)
    beside ours (one bar per zoo entry or run; "not run" written where there is none)."""
    columns = min(3, len(report)) or 1
    lines = -(-len(report) // columns)
    figure = Figure(figsize=(5.2 * columns, 0.55 + 2.1 * lines), dpi=100, layout="constrained")
    for index, report_table in enumerate(report):
        axes = figure.add_subplot(lines, columns, index + 1)
        _plot_table(axes, report_table)
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


def _plot_table(axes: Any, report_table: ReportTable) -> None:
    rows = report_table.rows
    values = [row.paper.value for row in rows if row.paper.value is not None]
    values += [100 * r.value for row in rows for r in row.results if r.value is not None]
    low, high = (min(values), max(values)) if values else (0.0, 100.0)
    left = max(0.0, low - max(2.0, 0.25 * (high - low)))
    for y, row in enumerate(rows):
        if row.paper.value is not None:
            axes.barh(y - 0.2, row.paper.value - left, left=left, height=0.36, color="0.7")
            axes.text(left, y - 0.2, f" {row.paper.paper}", va="center", fontsize=7, color="0.2")
            if row.paper.spread_value:
                axes.errorbar(row.paper.value, y - 0.2, xerr=row.paper.spread_value, color="0.3", capsize=2, lw=1)
        ours = [100 * r.value for r in row.results if r.value is not None]
        for offset, value in enumerate(ours):
            height = 0.36 / len(ours)
            axes.barh(y + 0.02 + height * (offset + 0.5), value - left, left=left, height=height, color="C0")
            axes.text(value, y + 0.02 + height * (offset + 0.5), f" {value:.2f}", va="center", fontsize=7)
        if not ours:
            axes.text(left + 0.02 * (high - left + 1), y + 0.2, NOT_RUN, va="center", fontsize=7, color="C3")
    axes.set_yticks(range(len(rows)), [row.paper.method for row in rows], fontsize=7)
    axes.set_ylim(len(rows) - 0.4, -0.6)  # first row on top
    axes.set_xlim(left, high + max(1.0, 0.12 * (high - left)))
    axes.tick_params(axis="x", labelsize=7)
    axes.set_xlabel(f"{report_table.table.metric} (%): paper (grey) / ours (blue)", fontsize=7)
    axes.set_title(textwrap.fill(report_table.table.title, 60), fontsize=8)


def plot_curves(runs: Sequence[Run], path: str | Path) -> Path:
    """``path``: a PNG of each run's train loss and validation accuracy (``val/acc``, else
    ``val/loss``) per epoch.

    Raises:
        ValueError: no run given, or a run that logged neither.
    """
    if not runs:
        raise ValueError("--curves: no run folder given")
    val_key = "val/acc" if any("val/acc" in run.columns() for run in runs) else "val/loss"
    for run in runs:
        if not run.train_loss()[1] and not run.per_epoch(val_key)[0]:
            raise ValueError(f"run folder {run.path}: metrics.csv has no train loss and no {val_key} per epoch")
    figure = Figure(figsize=(9.0, 3.4), dpi=100, layout="constrained")
    loss_axes, val_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    scale = 100.0 if val_key == "val/acc" else 1.0
    for index, run in enumerate(runs):
        # dashes differ too: runs that coincide (CH with shared weights and BP) stay visible
        style = {"color": f"C{index % 10}", "linestyle": ("-", "--", "-.", ":")[index % 4], "label": run.label}
        _, epochs, losses = run.train_loss()
        if epochs:
            loss_axes.plot(epochs, losses, marker=".", markersize=3, **style)
        epochs, values = run.per_epoch(val_key)
        if epochs:
            val_axes.plot(epochs, [scale * v for v in values], marker=".", markersize=3, **style)
    loss_axes.set(xlabel="epoch", ylabel="train loss", title="train loss")
    val_axes.set(xlabel="epoch", ylabel=f"{val_key}{' (%)' if val_key == 'val/acc' else ''}", title=val_key)
    for axes in (loss_axes, val_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m lit_bioplaus.report") -> argparse.Namespace:
    keys = [table.key for table in PAPER_TABLES]
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The papers' tables beside ours (zoo entries and run folders), and learning curves.",
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="CSVLogger run folders whose test metrics to add")
    parser.add_argument("--output", metavar="DIR", help=f"write {REPORT_MD} and {REPORT_PNG} (and {CURVES_PNG}) here")
    parser.add_argument(
        "--curves",
        nargs="*",
        metavar="RUN_DIR",
        help=f"plot these runs' train loss and val/acc per epoch into DIR/{CURVES_PNG} (no folder: the RUN_DIRs)",
    )
    parser.add_argument("--tables", nargs="+", choices=keys, metavar="KEY", help=f"only these tables: {keys}")
    args = parser.parse_args(argv)
    if args.curves is not None and args.output is None:
        parser.error("--curves needs --output DIR (where curves.png goes)")
    return args


def run_report(args: argparse.Namespace) -> str:
    """Build, write and return the report the parsed ``args`` ask for."""
    runs = find_runs(args.runs)
    curve_runs = (find_runs(args.curves) if args.curves else runs) if args.curves is not None else []
    tables = [table for table in PAPER_TABLES if args.tables is None or table.key in args.tables]
    report = build_report(runs=runs, tables=tables)
    markdown = to_markdown(report, runs)
    if args.output is not None:
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / REPORT_MD, markdown)
        plot_report(report, output / REPORT_PNG)
        if args.curves is not None:
            plot_curves(curve_runs, output / CURVES_PNG)
    return markdown


def main(argv: Sequence[str] | None = None, prog: str = "python -m lit_bioplaus.report") -> None:
    """``python -m lit_bioplaus.report`` (``lit-bioplaus report``: ``prog``): a bad run
    folder or an unreadable manifest is one ``error:`` line, exit
    status 1 (``LIT_BIOPLAUS_DEBUG=1`` shows the traceback)."""
    args = parse_args(argv, prog)
    try:
        markdown = run_report(args)
    except Exception as err:
        from lit_bioplaus.errors import explain

        message = str(err) if isinstance(err, OSError) else explain(err)  # OSError: writing --output
        if os.environ.get("LIT_BIOPLAUS_DEBUG"):
            message = None
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    print(markdown)
    if args.output is not None:
        written = [REPORT_MD, REPORT_PNG] + ([CURVES_PNG] if args.curves is not None else [])
        print(f"wrote {', '.join(str(Path(args.output) / name) for name in written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
