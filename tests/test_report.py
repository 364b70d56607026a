"""Reproduction report: the tables show the zoo manifest's numbers exactly ("not run"
where there is no entry), the papers' numbers as the papers print them, runs fill their
rows, markdown and PNGs are written, and a bad run folder is one line."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from lit_bioplaus import report
from lit_bioplaus.cli import cli_main
from lit_bioplaus.paper_tables import NO_NUMBER, PAPER_TABLES
from lit_bioplaus.registry import read_manifest, resource_root

SHARED = Path(__file__).resolve().parents[2] / "shared"
CH_PAPER_TEXT = SHARED / "papers" / "counter-hebb-instructed-vision.txt"
ALGORITHMS_MD = SHARED / "docs" / "ALGORITHMS.md"
CH_TABLES = Path(__file__).parent / "data" / "counter_hebb_tables.txt"
"""Tables 1-4 of the Counter-Hebb paper (``shared/papers``), quoted as its text gives them."""
CCL_RESULTS = Path(__file__).parent / "data" / "counter_current_results.txt"
"""The Counter-Current paper's reported MLP results, as ``shared/docs/ALGORITHMS.md`` gives them."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

HPARAMS = """\
_instantiator: lightning.pytorch.cli.instantiate_module
input_shape: !!python/tuple
- 1
- 28
- 28
seed_everything: {seed}
model:
  class_path: lit_bioplaus.algorithms.counter_hebb.CounterHebb
  init_args:
    network:
      class_path: lit_bioplaus.nn.MLP
      init_args:
        hidden:
        - 500
        activation: relu
        bias: true
        weight_mode: shared
    loss: ce
    optimizer:
      class_path: torch.optim.Adam
      init_args:
        lr: {lr}
data:
  class_path: lit_bioplaus.data.FashionMNIST
  init_args:
    batch_size: 20
    eval_batch_size: 1000
trainer:
  max_epochs: 50
  callbacks:
  - class_path: lightning.pytorch.callbacks.ModelCheckpoint
    init_args:
      filename: last
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      name: {name}
      save_dir: runs
"""

METRICS = """\
epoch,step,test/acc,test/loss,train/acc,train/loss_epoch,train/loss_step,val/acc,val/loss
0,9,,,,,2.0,,
0,19,,,,,1.0,,
0,20,,,,,,0.5,1.2
0,20,,,0.4,1.5,,,
1,29,,,,,0.8,,
1,39,,,,,0.6,,
1,40,,,,,,0.75,0.7
1,40,,,0.7,0.7,,,
2,41,{test_acc},0.6,,,,,
"""


def make_run(folder: Path, name: str = "ch_mlp500_fashion_mnist_sym", seed: int = 0, lr: str = "0.0001",
             test_acc: str = "0.9012") -> Path:  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "hparams.yaml").write_text(HPARAMS.format(seed=seed, lr=lr, name=name))
    (folder / "metrics.csv").write_text(METRICS.format(test_acc=test_acc))
    return folder


def markdown_rows(markdown: str) -> dict[str, list[list[str]]]:
    """``{table title: [[method, paper, ours, command], ...]}`` from the report's markdown."""
    tables: dict[str, list[list[str]]] = {}
    title = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            title = line[3:]
            tables[title] = []
        elif title and line.startswith("| ") and not line.startswith(("| method ", "| run ")):
            tables[title].append([cell.strip() for cell in line.strip("|").split(" | ")])
    return tables


def manifest_entries(manifest: dict, recipe: str | None) -> list[tuple[str, dict]]:
    return sorted((name, entry) for name, entry in manifest.items() if recipe and entry["recipe"] == recipe)


def test_every_row_shows_the_manifest_metric_or_not_run():
    manifest = read_manifest()
    built = report.build_report()
    cells = markdown_rows(report.to_markdown(built))
    filled = set()
    for report_table in built:
        lines = iter(cells[report_table.table.title])
        for row in report_table.rows:
            entries = manifest_entries(manifest, row.paper.recipe)
            metric = report_table.table.metric
            assert [result.value for result in row.results] == [entry["metrics"][metric] for _, entry in entries]
            for name, entry in entries or [(None, None)]:
                method, paper, ours, command = next(lines)
                assert method == row.paper.method
                assert paper.split(" [")[0] == row.paper.paper_text
                if entry is None:
                    assert ours == report.NOT_RUN
                    continue
                assert Decimal(ours) / 100 == Decimal(repr(entry["metrics"][metric]))  # exactly the manifest's
                assert command == f"`{entry['command']}` (zoo `{name}`)"
                filled.add((report_table.table.key, row.paper.method))
        assert next(lines, None) is None
    # the zoo's Fashion-MNIST entries are in the CH and CCL tables; CelebA is not run
    assert {("ch_fashion_mnist", m) for m in ("BP", "CH sym", "CH asym", "FA")} <= filled
    assert {("ccl_fashion_mnist", "BP"), ("ccl_fashion_mnist", "CCL")} <= filled
    assert {("ch_multi_fashion_mnist", "CH sym"), ("ch_multi_fashion_mnist", "BP (same guided net)")} <= filled
    assert all(ours == report.NOT_RUN for *_, ours, _ in cells[report.PAPER_TABLES[-1].title])


def test_every_recipe_exists_and_names_its_runs():
    recipes = [row.recipe for table in PAPER_TABLES for row in table.rows if row.recipe is not None]
    assert len(recipes) == len(set(recipes))  # a recipe's number goes in one row
    for recipe in recipes:
        assert (resource_root() / recipe).is_file(), recipe
        assert report.recipe_run_name(recipe) == Path(recipe).parent.name + "_" + Path(recipe).stem, recipe


def test_a_row_without_its_zoo_entry_says_not_run():
    manifest = copy.deepcopy(read_manifest())
    del manifest["ch_mlp500_fashion_mnist_sym"]
    manifest["bp_mlp500_fashion_mnist"]["metrics"]["test/acc"] = 0.12345
    (table,) = report.build_report(manifest, tables=[PAPER_TABLES[0]])
    rows = {row.paper.method: row for row in table.rows}
    assert rows["CH sym"].results == ()
    assert [r.value for r in rows["BP"].results] == [0.12345]
    cells = {method: ours for method, _, ours, _ in markdown_rows(report.to_markdown([table]))[table.table.title]}
    assert cells["CH sym"] == report.NOT_RUN
    assert cells["BP"] == "12.345"
    assert cells["DFA"] == report.NOT_RUN


PAPER_NUMBERS = {
    # the papers' tables as printed: Counter-Hebb Tables 1-4, Counter-Current Table 1
    ("ch_fashion_mnist", "BP"): "89.94 ± 0.2",
    ("ch_fashion_mnist", "CH sym"): "89.99 ± 0.2",
    ("ch_fashion_mnist", "CH asym"): "89.27 ± 0.1",
    ("ch_fashion_mnist", "FA"): "88.38 ± 0.9",
    ("ch_fashion_mnist", "DFA"): NO_NUMBER,
    ("ch_fashion_mnist_mse", "BP"): "90.16 ± 0.2",
    ("ch_fashion_mnist_mse", "CH sym"): "90.13 ± 0.2",
    ("ch_fashion_mnist_mse", "CH asym"): "89.54 ± 0.2",
    ("ch_fashion_mnist_mse", "FA"): "88.72 ± 0.5",
    ("ccl_fashion_mnist", "BP"): "89.58",
    ("ccl_fashion_mnist", "FA"): "87.38",
    ("ccl_fashion_mnist", "CCL"): "88.58 ± 0.29",
    ("ch_multi_mnist", "CH sym"): "94.20 ± 0.30",
    ("ch_multi_mnist", "CH asym"): "88.92 ± 2.15",
    ("ch_celeba", "CH sym"): "89.51 ± 0.21",
    ("ch_celeba", "CH sym, multi decoder"): "89.69 ± 0.12",
    ("ch_celeba", "CH asym"): "79.25 ± 1.63",
}


def test_paper_numbers_are_the_papers():
    printed = {(table.key, row.method): row.paper_text for table in PAPER_TABLES for row in table.rows}
    assert {key: printed[key] for key in PAPER_NUMBERS} == PAPER_NUMBERS
    assert all(text == NO_NUMBER for (key, _), text in printed.items() if key == "ch_multi_fashion_mnist")
    markdown = report.to_markdown(report.build_report())
    assert "Abel & Ullman" in markdown and "Kao & Hariharan" in markdown
    for table in PAPER_TABLES:
        assert f"Paper: {table.source}" in markdown
    assert all(re.search(r"Table \d", table.source) for table in PAPER_TABLES if table.key != "ch_multi_fashion_mnist")


def table_block(text: str, caption: str) -> list[str]:
    """The lines of the paragraph (between blank lines) that holds ``caption``."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(caption))
    start = max((i for i in range(at) if not lines[i].strip()), default=-1) + 1
    end = next((i for i in range(at, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def test_paper_numbers_match_the_counter_hebb_paper_text():
    """Against the paper's tables, quoted verbatim in ``tests/data`` (and, where the paper's
    text is beside this checkout, the quotes against it)."""
    text = CH_TABLES.read_text()
    if CH_PAPER_TEXT.is_file():
        paper = CH_PAPER_TEXT.read_text()
        assert all(block in paper for block in text.strip().split("\n\n"))
    checked = 0
    for table in PAPER_TABLES:
        number = re.search(r"Table (\d)", table.source)
        if not table.source.startswith("Abel") or number is None:
            continue
        block = table_block(text, f"Table {number.group(1)}:")
        for row in table.rows:
            if row.paper is None:
                continue
            (line,) = [
                line for line in block if line.startswith(f"{row.label} ") and line[len(row.label) + 1].isdigit()
            ]
            assert f"{row.paper} {row.spread}" in line, (table.key, row.method, line)
            checked += 1
    assert checked == 14  # Tables 1 and 3: four rows each; Table 2: three; Table 4: three


def test_paper_numbers_match_the_counter_current_results():
    """Against the Counter-Current results as ALGORITHMS.md gives them, quoted in ``tests/data``."""
    quoted = CCL_RESULTS.read_text()
    if ALGORITHMS_MD.is_file():
        assert quoted in ALGORITHMS_MD.read_text()
    rows = {row.method: row for row in next(t for t in PAPER_TABLES if t.key == "ccl_fashion_mnist").rows}
    expected = f"FashionMNIST {rows['BP'].paper} / {rows['FA'].paper} / {rows['CCL'].paper} ± {rows['CCL'].spread}"
    assert expected in " ".join(quoted.split())


def test_runs_fill_their_rows_with_the_command_that_reproduces_them(tmp_path):
    runs = report.find_runs([
        make_run(tmp_path / "runs" / "ch_mlp500_fashion_mnist_sym" / "version_0", seed=1, lr="0.001"),
        make_run(tmp_path / "other" / "version_0", name="my_experiment", test_acc="0.5"),
    ])  # fmt: skip
    assert runs[0].hparams["input_shape"] == (1, 28, 28)  # Lightning's !!python/tuple
    (table,) = report.build_report(runs=runs, tables=[PAPER_TABLES[0]])
    sym = next(row for row in table.rows if row.paper.method == "CH sym")
    zoo, run = sym.results
    assert zoo.source == "zoo `ch_mlp500_fashion_mnist_sym`"
    assert run.value == 0.9012
    assert run.source == f"run `{runs[0].path}`"
    # the recipe's settings the run changed, and no others (class paths name the same class)
    assert run.command == (
        "lit-bioplaus fit --config configs/ch/mlp500_fashion_mnist_sym.yaml --seed_everything 1 "
        "--model.init_args.optimizer.init_args.lr 0.001"
    )
    markdown = report.to_markdown([table], runs)
    cells = markdown_rows(markdown)[table.table.title]
    assert ["CH sym", "89.99 ± 0.2", "90.12", f"`{run.command}` (run `{runs[0].path}`)"] in cells
    others = markdown_rows(markdown)["Runs in no paper table"]
    assert others == [["my_experiment/version_0", "50.00", f"`{runs[1].path}`"]]


def test_a_folder_of_runs_stands_for_its_versions(tmp_path):
    make_run(tmp_path / "name" / "version_0")
    make_run(tmp_path / "name" / "version_1", test_acc="")
    runs = report.find_runs([tmp_path / "name"])
    assert [run.path.name for run in runs] == ["version_0", "version_1"]
    assert runs[1].last("test/acc") is None
    (table,) = report.build_report(runs=runs, tables=[PAPER_TABLES[0]])
    ours = [r[2] for r in markdown_rows(report.to_markdown([table], runs))[table.table.title] if r[0] == "CH sym"]
    assert ours == ["89.81", "90.12", "no test/acc in metrics.csv"]
    make_run(tmp_path / "other" / "version_0")
    assert [run.path for run in report.find_runs([tmp_path])] == [
        tmp_path / "name" / "version_0",
        tmp_path / "name" / "version_1",
        tmp_path / "other" / "version_0",
    ]


def test_learning_curves_from_metrics_csv(tmp_path):
    run = report.read_run(make_run(tmp_path / "run" / "version_0"))
    assert run.train_loss() == ("train/loss_epoch", [1, 2], [1.5, 0.7])
    assert run.per_epoch("val/acc") == ([1, 2], [0.5, 0.75])
    (tmp_path / "steps").mkdir()
    (tmp_path / "steps" / "metrics.csv").write_text("epoch,step,train/loss_step\n0,1,2.0\n0,2,1.0\n1,3,0.5\n")
    steps = report.read_run(tmp_path / "steps")
    assert steps.name == "steps" and steps.hparams == {}
    assert steps.train_loss() == ("train/loss_step", [1, 2], [1.5, 0.5])  # the mean of each epoch's steps
    path = report.plot_curves([run, steps], tmp_path / "curves.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_main_prints_and_writes_markdown_and_pngs(tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "ch_mlp500_fashion_mnist_sym" / "version_0")
    out = tmp_path / "out"
    report.main([str(run), "--output", str(out), "--curves"])
    printed = capsys.readouterr()
    assert (out / "report.md").read_text() + "\n" == printed.out
    assert "| CH sym | 89.99 ± 0.2 | 90.12 |" in printed.out
    for name in ("report.png", "curves.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC
        assert 5_000 < len(data) < 200_000
    assert f"wrote {out / 'report.md'}" in printed.err


def test_tables_option_selects_tables(capsys):
    report.main(["--tables", "ccl_fashion_mnist"])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("## ")] == [f"## {PAPER_TABLES[2].title}"]
    assert "| CCL | 88.58 ± 0.29 | 88.53 |" in out


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (None, r"run folder .*missing: no such folder"),
        ({}, r"no metrics\.csv \(give a CSVLogger run folder"),
        ({"metrics.csv": ""}, "metrics.csv has no logged rows"),
        ({"metrics.csv": "epoch,a\n0,x\n"}, "non-numeric a value 'x'"),
        ({"metrics.csv": "epoch,a\n0,1,2\n"}, "metrics.csv is malformed"),
        ({"metrics.csv": "epoch\n0\n", "hparams.yaml": "a: ["}, "hparams.yaml is not readable YAML"),
        ({"metrics.csv": "epoch\n0\n", "hparams.yaml": "- a"}, "hparams.yaml is not a mapping"),
    ],
)
def test_a_bad_run_folder_is_one_line(tmp_path, capsys, files, message):
    folder = tmp_path / "missing"
    if files is not None:
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        report.read_run(folder)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(folder)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.match(f"error: .*{message}", err)


def test_curves_need_an_output_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--curves", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--curves needs --output DIR" in capsys.readouterr().err


def test_python_m_entry_point_refuses_a_bad_folder_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lit_bioplaus.report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: run folder {tmp_path / 'nope'}: no such folder"
    assert result.stdout == ""


def test_the_program_name_is_the_callers(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main(["--help"], prog="lit-bioplaus report")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: lit-bioplaus report")


def test_lit_bioplaus_report_is_the_report_command(capsys):
    cli_main(["report", "--tables", PAPER_TABLES[0].key])
    assert PAPER_TABLES[0].title in capsys.readouterr().out
