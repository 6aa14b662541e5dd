"""The documentation site builds without a warning, and every page it generates has a
target.

The full site (``make docs``) renders the API reference from the docstrings and the
notebooks from their stored outputs. Here Sphinx's ``dummy`` builder reads every page
(conf.py, every autodoc target imported, every notebook parsed, every toctree and
cross-reference resolved) and writes nothing, with warnings as errors: what fails here
fails ``make docs``. It needs the ``docs`` extra and is skipped without it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def documented_packages() -> list[str]:
    """``PACKAGES`` of docs/conf.py, read without running conf.py."""
    tree = ast.parse((DOCS / "conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == "PACKAGES" for t in targets):
                return ast.literal_eval(node.value)
    raise AssertionError("docs/conf.py defines no PACKAGES list")


@pytest.mark.parametrize("package", documented_packages())
def test_every_public_name_of_a_documented_package_exists(package):
    module = importlib.import_module(package)
    public = getattr(module, "__all__", None)
    assert public, f"{package} has no __all__: the API page would be empty"
    missing = [name for name in public if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names {missing}, which it does not define"


def test_every_notebook_and_family_page_is_in_a_toctree():
    tutorials = (DOCS / "tutorials.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"tutorials/{notebook.stem}\n" in tutorials, (
            f"notebooks/{notebook.name} is not listed in docs/tutorials.md")
    index = (DOCS / "index.md").read_text()
    for page in sorted((DOCS / "families").glob("*.md")):
        assert f"families/{page.stem}\n" in index, f"docs/families/{page.name} is not in index.md"


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("sphinx", "myst_nb", "furo")),
    reason="the docs extra is not installed (pip install -c constraints.txt -e '.[docs]')",
)
def test_the_site_builds_without_warnings(tmp_path):
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "dummy", "-W", "--keep-going", "-q",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "POSTERITY_PROGRESS": "0"},
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, (
        f"sphinx-build failed after {seconds:.0f} s:\n{done.stderr[-6000:]}")
