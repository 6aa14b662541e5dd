"""Every notebook in notebooks/ is committed executed, with its figures, and runs from
top to bottom in its short mode."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PLOTS = re.compile(r"\bplt\.|\baz\.plot_|\.plot\(")


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_with_its_figures(path):
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    counts = [cell.get("execution_count") for cell in cells]
    never = [i for i, count in enumerate(counts) if count is None]
    assert not never, f"{path.name}: code cells {never} were never executed"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts}: not one run from top to bottom")
    outputs = [output for cell in cells for output in cell.get("outputs", [])]
    assert outputs, f"{path.name} holds no output"
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name} holds an error: {errors[0].get('ename')}"
    stderr = [o["text"][:300] for o in outputs
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, f"{path.name} holds stray stderr output (warnings, progress bars): {stderr}"
    plotting = [i for i, cell in enumerate(cells) if PLOTS.search(cell.source)]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    if plotting:
        assert images, (f"{path.name} plots (code cells {plotting}) but stores no image: "
                        "execute it with an inline backend (%matplotlib inline)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_short_mode(path, monkeypatch, tmp_path):
    monkeypatch.setenv("POSTERITY_NOTEBOOK_SHORT", "1")
    monkeypatch.setenv("POSTERITY_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
