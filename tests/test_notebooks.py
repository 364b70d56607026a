"""The notebooks under ``notebooks/``: each runs top to bottom, and each is committed stripped.

Every ``notebooks/*.ipynb`` is executed with nbclient in a fresh kernel of this interpreter
(``sys.executable``, through a kernel spec written to a temporary folder, so no
``ipykernel install`` is needed and no other ``python3`` kernel on the machine is picked up),
with a temporary working directory and one thread per library. A cell that raises fails the
test; so does a notebook that leaves files in its working directory (run from ``notebooks/``
in Jupyter, it would litter the checkout) or one that runs past ``NOTEBOOK_BUDGET_S``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient.exceptions import CellExecutionError

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "lit-bioplaus-tests"
CELL_TIMEOUT_S = 300
NOTEBOOK_BUDGET_S = 240
"""Each notebook is meant to run in under 2 minutes on a 2-core machine; twice that fails."""

THREADS = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


@pytest.fixture(scope="session")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernel spec that runs ``sys.executable -m ipykernel_launcher``, alone in its folder."""
    folder = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(folder / KERNEL_NAME)
    return KernelSpecManager(kernel_dirs=[str(folder)], ensure_native_kernel=False)


def execute(notebook: nbformat.NotebookNode, cwd: Path, kernel_specs: KernelSpecManager) -> nbformat.NotebookNode:
    """Run every cell of ``notebook`` in a new kernel with working directory ``cwd``; a cell
    that raises raises ``CellExecutionError``."""
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_specs)
    # the connection file in a folder of its own, not in the user's Jupyter runtime folder
    runtime = Path(tempfile.mkdtemp(prefix="lit-bioplaus-kernel-"))
    manager.connection_file = str(runtime / "kernel.json")
    client = nbclient.NotebookClient(
        notebook,
        km=manager,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(cwd)}},
    )
    try:
        return client.execute()
    finally:  # the client shuts down only kernels it made itself
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
        for leftover in runtime.iterdir():
            leftover.unlink()
        runtime.rmdir()


def code_notebook(*sources: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])


def test_notebooks_exist() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_stripped(path: Path) -> None:
    """Committed notebooks carry no outputs and no execution counts (and are valid nbformat)."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


def test_kernel_is_this_interpreter(kernel_specs: KernelSpecManager, tmp_path: Path) -> None:
    """The kernel runs this interpreter (whatever ``python`` is on the PATH) in the given folder."""
    source = "import os, sys\nprint(sys.executable)\nprint(os.getcwd())"
    executed = execute(code_notebook(source), tmp_path, kernel_specs)
    printed = "".join(output.get("text", "") for output in executed.cells[0].outputs).split()
    assert Path(printed[0]).resolve() == Path(sys.executable).resolve()
    assert Path(printed[1]).resolve() == tmp_path.resolve()


def test_failing_cell_fails(kernel_specs: KernelSpecManager, tmp_path: Path) -> None:
    """The harness notices a cell that raises (an assertion in a notebook is a test failure)."""
    with pytest.raises(CellExecutionError, match="regression caught"):
        execute(code_notebook("x = 1", "assert x == 2, 'regression caught'", "print('never')"), tmp_path, kernel_specs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(
    path: Path, kernel_specs: KernelSpecManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in THREADS.items():
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    execute(notebook, tmp_path, kernel_specs)
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f} s")
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert not left, f"{path.name} wrote into its working directory: {left}"
    assert seconds < NOTEBOOK_BUDGET_S, f"{path.name} took {seconds:.0f} s (budget {NOTEBOOK_BUDGET_S} s)"
