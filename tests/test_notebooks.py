"""The notebooks under notebooks/: committed without outputs, and each runs top to bottom without a cell error.

They run as Jupyter runs them: nbclient starts a kernel of this interpreter (the "python3" kernel that ipykernel
installs, whose command jupyter_client points at the running Python) in the notebooks/ folder, with this process's
environment; a cell that raises fails the test with its traceback.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))


def test_the_three_notebooks_are_there() -> None:
    assert {"quickstart.ipynb", "planning.ipynb", "results.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    executed = [i for i, cell in enumerate(notebook.cells)
                if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not executed, (
        f"{path.name}: code cells {executed} hold outputs or execution counts; commit notebooks cleared "
        f"(Jupyter: Edit > Clear Outputs of All Cells, or: jupyter nbconvert --clear-output --inplace {path.name})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_a_cell_error(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(FOLDER)}}).execute()
