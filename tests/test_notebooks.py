"""Every notebook in notebooks/ is committed executed, with its figures, and runs from
top to bottom in its short mode."""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

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


# Executes one notebook in its own process and writes the executed copy (argv: notebook,
# working directory, output path); an error in a cell makes the process fail.
EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
notebook = nbformat.read(sys.argv[1], as_version=4)
try:
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": sys.argv[2]}}).execute()
finally:
    nbformat.write(notebook, sys.argv[3])
"""


@pytest.fixture(scope="module")
def short_runs(request, tmp_path_factory):
    """The notebooks whose short-mode test was selected, executed two at a time (each
    kernel is a process of its own, so the suite's second core is used):
    ``{stem: (process, executed path)}``."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_notebook_runs_in_short_mode"]
    env = {**os.environ, "POSTERITY_NOTEBOOK_SHORT": "1", "POSTERITY_PROGRESS": "0",
           "MPLBACKEND": "Agg"}

    def execute(path):
        workdir = tmp_path_factory.mktemp(path.stem)
        out = workdir / path.name
        done = subprocess.run([sys.executable, "-c", EXECUTE, str(path), str(workdir), str(out)],
                              env=env, capture_output=True, text=True, timeout=900)
        return path.stem, (done, out)

    workers = min(2, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(execute, selected))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_short_mode(path, short_runs):
    done, executed = short_runs[path.stem]
    assert executed.exists(), f"{path.name} did not run: {done.stderr[-2000:]}"
    notebook = nbformat.read(executed, as_version=4)
    errors = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    assert done.returncode == 0, f"{path.name}: {done.stderr[-2000:]}"
