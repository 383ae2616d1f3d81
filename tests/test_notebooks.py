"""The notebooks run top to bottom in a real Jupyter kernel, in quick mode, and draw their figures.

Each notebook is executed in memory (the committed file is never rewritten) by ``nbclient`` in the
``python3`` kernel of this environment, with ``PPL_VAE_QUICK=1`` in the kernel's environment so
that the notebooks train for a couple of epochs only. A cell that raises fails the test. Every code
cell tagged ``figure`` in its metadata must leave an ``image/png`` output, which a figure only does
when it is really drawn inline (``exec`` of the code cells could not tell a blank figure from one).
The executed copy is written to the test's ``tmp_path`` for a look after a failure.
"""

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL = "python3"
FIGURE_TAG = "figure"  # cell metadata tag of the cells that draw a figure
CELL_TIMEOUT = 600  # seconds for one cell, even in quick mode on two slow cores


def figure_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if FIGURE_TAG in cell.metadata.get("tags", [])]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_with_the_outputs_of_a_full_run(path):
    """Valid nbformat 4.5 (every cell has an id); every code cell executed once, in order (committed
    from a full run, so the notebook reads well without running it); every figure cell shows its
    image; no error and no warning noise among the outputs."""
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert (notebook.nbformat, notebook.nbformat_minor) >= (4, 5)
    assert all(cell.get("id") for cell in notebook.cells)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "not executed top to bottom"
    for cell in code:
        for output in cell.outputs:
            assert output.output_type != "error", f"cell {cell.id} ends in an error"
            text = output.get("text", "") if output.output_type == "stream" else ""
            assert "Warning" not in text and "IProgress" not in text, f"cell {cell.id} shows warning noise: {text}"
    assert figure_cells(notebook), f"no cell is tagged {FIGURE_TAG!r}"
    for cell in figure_cells(notebook):
        assert any("image/png" in output.get("data", {}) for output in cell.outputs), f"cell {cell.id} has no image"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs_and_draws_its_figures(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_QUICK", "1")  # read by the notebooks; the kernel inherits the environment
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    kernel_command = client.create_kernel_manager().format_kernel_cmd()
    assert kernel_command[0] == sys.executable, f"the {KERNEL} kernel would run {kernel_command}"
    try:
        client.execute()  # a CellExecutionError, with the cell and its traceback, if a cell raises
    finally:
        nbformat.write(notebook, tmp_path / path.name)
    for cell in figure_cells(notebook):
        assert any("image/png" in output.get("data", {}) for output in cell.outputs), (
            f"cell {cell.id} is tagged {FIGURE_TAG!r} but drew no inline PNG: {cell.outputs}")
