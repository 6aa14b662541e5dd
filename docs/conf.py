"""Sphinx configuration of the posterity documentation (``make docs``).

The API pages are written at build time from each package's ``__all__`` (one page per
package, every public object documented once, under the package closest to where it is
defined), and the notebooks are copied from ``../notebooks`` and rendered from their
stored outputs (``nb_execution_mode = "off"``): the suite executes them, the docs do not.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))

project = "posterity"
author = "the posterity authors"
copyright = "2026, the posterity authors"
try:
    from importlib.metadata import version as _version

    release = _version("posterity")
except Exception:  # documentation of an uninstalled checkout
    release = "0.1"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# notebooks render from their stored outputs
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
# PyroModule subclasses inherit torch's long docstrings; keep only their own
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Example", "example"), ("Shapes", "params_style")]

html_theme = "furo"
html_title = f"posterity {release}"
html_static_path: list[str] = []
html_theme_options = {
    "source_repository": "",
    "navigation_with_keys": True,
}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# A local MathJax (for reading the pages offline), e.g. the npm package's tex-chtml.js
if os.environ.get("POSTERITY_DOCS_MATHJAX"):
    mathjax_path = os.environ["POSTERITY_DOCS_MATHJAX"]

# autosummary cuts a summary at the first ". ", which can fall inside an inline literal
# (``q(z_1 | x) ... q(z_L | z_{L-1})``); keep the whole first sentence then.
import sphinx.ext.autosummary as _autosummary  # noqa: E402

_extract_summary = _autosummary.extract_summary


def _whole_literals(doc: list[str], settings) -> str:
    summary = _extract_summary(doc, settings)
    if summary.count("``") % 2 == 0:
        return summary
    paragraph = []
    for line in doc:
        if not line.strip() and paragraph:
            break
        paragraph.append(line.strip())
    sentences = " ".join(paragraph).split(". ")
    head = sentences.pop(0)
    while head.count("``") % 2 and sentences:
        head = f"{head}. {sentences.pop(0)}"
    return head if head.endswith(".") else head + "."


_autosummary.extract_summary = _whole_literals

# --- the notebooks as tutorials ---------------------------------------------------------

NOTEBOOKS = ROOT / "notebooks"
TUTORIALS = DOCS / "tutorials"


def copy_notebooks() -> list[str]:
    """Copy ``notebooks/*.ipynb`` into ``docs/tutorials`` (only those that changed, so
    that Sphinx rereads nothing it need not) and drop copies whose source is gone."""
    TUTORIALS.mkdir(exist_ok=True)
    names = []
    for source in sorted(NOTEBOOKS.glob("*.ipynb")):
        target = TUTORIALS / source.name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
        names.append(source.stem)
    for stale in TUTORIALS.glob("*.ipynb"):
        if stale.stem not in names:
            stale.unlink()
    return names


# --- the API pages ----------------------------------------------------------------------

# the documented packages, in the order of the API index
PACKAGES = [
    "posterity.infer",
    "posterity.infer.amortized",
    "posterity.infer.wake_sleep",
    "posterity.infer.smc",
    "posterity.infer.sgmcmc",
    "posterity.models",
    "posterity.guides",
    "posterity.layers",
    "posterity.datasets",
]
API = DOCS / "api"
# what the page generation found wrong, reported as Sphinx warnings (errors under -W)
PROBLEMS: list[str] = []


def home_package(obj: object, name: str, package: str) -> str:
    """The documented package an object belongs to: the one whose name is the longest
    prefix of the module that defines it, among those that export it."""
    module = getattr(obj, "__module__", None) or package
    owners = [
        p for p in PACKAGES
        if (module == p or module.startswith(p + "."))
        and name in getattr(importlib.import_module(p), "__all__", ())
    ]
    return max(owners, key=len) if owners else package


def submodules(package: str) -> list[str]:
    module = importlib.import_module(package)
    return sorted(
        f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__)
        if not info.ispkg and not info.name.startswith("_")
    )


def api_page(package: str) -> tuple[str, list[tuple[str, str]]]:
    """The reStructuredText of one package's page, and the re-exported names it skips
    (with the package where they are documented)."""
    module = importlib.import_module(package)
    public = list(getattr(module, "__all__", ()))
    for name in [n for n in public if not hasattr(module, n)]:
        PROBLEMS.append(f"{package}.__all__ names {name!r}, which the package does not define")
        public.remove(name)
    own, elsewhere, aliases = [], [], []
    for name in public:
        obj = getattr(module, name)
        original = getattr(obj, "__name__", name)
        if original != name and original in public and getattr(module, original) is obj:
            aliases.append((name, original))  # an older name kept for compatibility
            continue
        home = home_package(obj, name, package)
        (own if home == package else elsewhere).append((name, home))
    classes = [n for n, _ in own if isinstance(getattr(module, n), type)]
    functions = [n for n, _ in own if not isinstance(getattr(module, n), type)]
    lines = [package, "=" * len(package), "", f".. automodule:: {package}",
             "   :no-members:", "", f".. currentmodule:: {package}", ""]
    for title, names in (("Classes", classes), ("Functions and constants", functions)):
        if names:
            lines += [title, "-" * len(title), "", ".. autosummary::", "   :toctree: generated",
                      "   :nosignatures:", ""]
            lines += [f"   {name}" for name in names] + [""]
    if elsewhere or aliases:
        lines += ["Also exported here", "------------------", ""]
        lines += [f"* :obj:`{name} <{home}.{name}>` (documented in :mod:`{home}`)"
                  for name, home in elsewhere]
        lines += [f"* ``{name}``: another name of :obj:`{original} <{package}.{original}>`"
                  for name, original in aliases] + [""]
    mods = submodules(package)
    if mods:
        lines += ["Modules", "-------", "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   modules/{m}" for m in mods] + [""]
    return "\n".join(lines), elsewhere


def documented_on_a_package_page(obj: object) -> bool:
    """Whether a package page documents ``obj`` (a package exports it)."""
    return any(getattr(importlib.import_module(p), n, None) is obj
               for p in PACKAGES for n in getattr(importlib.import_module(p), "__all__", ()))


def module_members(module: str) -> list[tuple[str, str, list[str]]]:
    """``(directive, name, options)`` of the module's own public classes and functions
    that no package page documents: helpers users meet in the guides
    (``distributed.run_local``, ``report.register_section``, ...). One whose name a
    package page documents too (the ``StateSpaceModel`` protocol) is not indexed, so
    that short references stay unique; a named tuple's fields are documented once, by
    its docstring."""
    mod = importlib.import_module(module)
    exported = {n for p in PACKAGES for n in getattr(importlib.import_module(p), "__all__", ())}
    members = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module:
            continue
        if not (isinstance(obj, type) or inspect.isfunction(obj)):
            continue
        if documented_on_a_package_page(obj):
            continue
        options = ["   :no-index:"] if name in exported else []
        fields = getattr(obj, "_fields", None) if isinstance(obj, type) else None
        if fields:
            options.append(f"   :exclude-members: {', '.join(fields)}")
        members.append(("autoclass" if isinstance(obj, type) else "autofunction", name,
                        options))
    from sphinx.pycode import ModuleAnalyzer

    documented = ModuleAnalyzer.for_module(module).find_attr_docs()
    for (scope, name), _ in documented.items():  # constants with a docstring or #: comment
        obj = getattr(mod, name, None)
        exported_here = any(getattr(importlib.import_module(p), name, None) is obj
                            and name in getattr(importlib.import_module(p), "__all__", ())
                            for p in PACKAGES)
        if scope == "" and name.isupper() and not exported_here:
            members.append(("autodata", name, ["   :no-value:"]))
    return members


def module_page(module: str) -> str:
    """A module's own docstring, then its public classes and functions that no package
    page documents. A module shadowed by an object of the same name in its package
    (``posterity.infer.report`` the function, ``report.py`` the module) is not indexed
    itself, so that names stay unique; its members are, under the module's name."""
    parent, _, last = module.rpartition(".")
    shadowed = getattr(importlib.import_module(parent), last, None) is not \
        importlib.import_module(module)
    options = ["   :no-members:"] + (["   :no-index:"] if shadowed else [])
    title = f"{last} (module)"
    lines = [title, "=" * len(title), "", f"``{module}``", "",
             f".. automodule:: {module}", *options, ""]
    members = module_members(module)
    if members:
        lines += [f".. currentmodule:: {module}", ""]
        for directive, name, member_options in members:
            lines += [f".. {directive}:: {name}", *member_options, ""]
    return "\n".join(lines)


def write_if_changed(target: Path, text: str) -> None:
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def write_api_pages() -> None:
    """Write the package and module pages, and remove generated pages of objects and
    modules that are gone (they would be orphans: a warning)."""
    (API / "modules").mkdir(parents=True, exist_ok=True)
    pages, modules = set(), set()
    for package in PACKAGES:
        text, _ = api_page(package)
        write_if_changed(API / f"{package}.rst", text)
        pages |= {f"{package}.{line.strip()}.rst" for line in text.splitlines()
                  if line.startswith("   ") and not line.strip().startswith(":")}
        for module in submodules(package):
            write_if_changed(API / "modules" / f"{module}.rst", module_page(module))
            modules.add(f"{module}.rst")
    for folder, keep in ((API / "generated", pages), (API / "modules", modules)):
        for page in folder.glob("*.rst") if folder.exists() else ():
            if page.name not in keep:
                page.unlink()


copy_notebooks()
write_api_pages()


def _constant_docstring(app, what, name, obj, options, lines) -> None:
    """A constant re-exported by a package (``posterity.infer.wake_sleep.DEFAULTS``)
    would show its type's docstring (``dict``'s, with RST errors); show the ``#:``
    comment of the module that defines it instead, or nothing."""
    if what not in ("data", "attribute") or getattr(obj, "__doc__", None) != \
            getattr(type(obj), "__doc__", None):
        return
    from sphinx.pycode import ModuleAnalyzer

    package, _, attr = name.rpartition(".")
    lines.clear()
    try:
        modules = submodules(package)
    except (ImportError, AttributeError):
        return
    for module in modules:
        if getattr(importlib.import_module(module), attr, None) is not obj:
            continue
        comment = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", attr))
        if comment:
            lines.extend(comment)
            return


def _report_problems(app) -> None:
    from sphinx.util import logging

    logger = logging.getLogger("posterity.docs")
    for problem in PROBLEMS:
        logger.warning(problem)


def setup(app):
    app.connect("builder-inited", _report_problems)
    app.connect("autodoc-process-docstring", _constant_docstring)
