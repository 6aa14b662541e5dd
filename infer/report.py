"""Self-contained HTML reports of ``InferenceData``: the page, the section registry, the
helpers sections draw with, and the generic sections.

A report is a box of key figures followed by sections. Each is built by a function that
looks at an ``InferenceData`` and returns HTML (or key figures), or ``None`` when it has
nothing to say. Engine families register their own builders beside their engines
(``posterity.infer.<family>.sections``) with :func:`register_section` and
:func:`register_key_figures`, naming the groups they read (from
:data:`posterity.infer.inference_data.GROUPS`) and an ``order``: the page shows lower
orders first. This module knows no family by name.

Orders used by the built-in sections: :data:`ORDER_FIRST` (pictures users look at
first: reconstructions, rate-distortion curves, filtered states), :data:`ORDER_DIAGNOSTICS`
(where inference fails: k̂, traces and ranks), :data:`ORDER_TRAINING`, and
:data:`ORDER_DETAILS` (long tables, collapsed).

Import from this module by name (``from posterity.infer.report import
register_section``): ``posterity.infer`` exports the function :func:`report` under the
module's name, so ``import posterity.infer.report as r`` binds the function.

Example:
    >>> import arviz as az, numpy as np
    >>> idata = az.from_dict(posterior={"mu": np.zeros((2, 50))})
    >>> idata.posterior.attrs.update(test_log_likelihood=-16.94000816345215,
    ...                              test_log_likelihood_se=0.0312)
    >>> "-16.940 ± 0.031" in render(idata)
    True
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from .inference_data import GROUPS

ORDER_KEY = 0
ORDER_FIRST = 10
ORDER_DIAGNOSTICS = 30
ORDER_TRAINING = 50
ORDER_DETAILS = 90

SectionBuilder = Callable[[az.InferenceData], "str | None"]


class KeyFigure(NamedTuple):
    """One line of the key-figures box: a label, its formatted value and a note;
    ``warning`` figures (a run not to be trusted as it stands) are shown in red."""

    label: str
    value: str
    note: str = ""
    warning: bool = False


KeyFigureBuilder = Callable[[az.InferenceData], "Sequence[KeyFigure] | None"]


@dataclass(frozen=True)
class Section:
    """A registered builder, the groups it needs and its place on the page."""

    build: Callable[[az.InferenceData], Any]
    groups: tuple[str, ...]
    order: int
    name: str

    def applies(self, idata: az.InferenceData) -> bool:
        return all(group in idata.groups() for group in self.groups)


_SECTIONS: list[Section] = []
_KEY_FIGURES: list[Section] = []

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;margin-top:1.6em}
h3{font-size:1.05em}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}th{background:#f5f5f5}
img{max-width:100%}.note{color:#555;font-size:.9em}.bad{color:#b00}.good{color:#070}
.key{border:1px solid #ccd;background:#f7f8fc;padding:.4em 1em;margin:1em 0}
.key table{font-size:1em}.key td,.key th{border:0;text-align:left;padding:2px 12px 2px 0}
.key td.value{font-weight:600;font-variant-numeric:tabular-nums}
.key tr.warn td,.key tr.warn th{color:#b3261e}
details{margin:.6em 0}summary{cursor:pointer;color:#335}
"""


def _check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    groups = tuple(groups)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"groups must come from posterity.infer.inference_data.GROUPS "
                         f"{tuple(GROUPS)}, got {unknown}")
    return groups


def _register(registry: list[Section], builder, groups, order):
    def add(function):
        if not callable(function):
            raise TypeError(f"a section builder must be callable, got {type(function).__name__}")
        name = f"{function.__module__}.{function.__qualname__}"
        registry[:] = [s for s in registry if s.name != name]  # re-import replaces
        registry.append(Section(function, _check_groups(groups), int(order), name))
        registry.sort(key=lambda s: s.order)  # stable: equal orders keep registration order
        return function

    return add(builder) if builder is not None else add


def register_section(
    builder: SectionBuilder | None = None,
    *,
    groups: Iterable[str] = (),
    order: int = ORDER_TRAINING,
):
    """Add a section to every report; usable as ``@register_section(groups=..., order=...)``.

    Args:
        builder: ``idata -> html | None``; called only when every group in ``groups`` is
            present. Its ``<h2>`` heading starts the section.
        groups: the groups it reads, names from
            :data:`~posterity.infer.inference_data.GROUPS`.
        order: the page shows lower orders first (``ORDER_*`` constants of this module).
    """
    return _register(_SECTIONS, builder, groups, order)


def register_key_figures(
    builder: KeyFigureBuilder | None = None,
    *,
    groups: Iterable[str] = (),
    order: int = ORDER_TRAINING,
):
    """Add lines to the key-figures box at the top of every report (decorator like
    :func:`register_section`); ``builder`` returns :class:`KeyFigure` s or ``None``."""
    return _register(_KEY_FIGURES, builder, groups, order)


def sections() -> list[Section]:
    """The registered sections, in page order."""
    return list(_SECTIONS)


# ----- numbers -----


def format_number(value: Any, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, without an exponent from 1 to a
    million; integers, booleans and text as they are.

    Example:
        >>> format_number(-16.94000816345215), format_number(12345678.9), format_number(3)
        ('-16.94', '1.235e+07', '3')
        >>> format_number(1234.5, 2), format_number(0.0731449), format_number(2.0)
        ('1200', '0.07314', '2')
    """
    if isinstance(value, (bool, np.bool_, int, np.integer, str)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isfinite(number) and 1 <= abs(number) < 1e6:
            places = digits - 1 - math.floor(math.log10(abs(number)))
            text = f"{round(number, places):.{max(places, 0)}f}"
            return text.rstrip("0").rstrip(".") if "." in text else text
        return f"{number:.{digits}g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        items = np.asarray(value).ravel().tolist()
        shown = ", ".join(format_number(v, digits) for v in items[:8])
        return f"[{shown}{', …' if len(items) > 8 else ''}]"
    return str(value)


def format_estimate(value: float, stderr: float | None) -> str:
    """``value ± stderr`` with ``value`` rounded to the digits its standard error justifies
    (two significant digits of ``stderr``); four significant digits without one.

    Example:
        >>> format_estimate(-16.94000816345215, 0.0312), format_estimate(-85.2719, 2.31)
        ('-16.940 ± 0.031', '-85.3 ± 2.3')
        >>> format_estimate(1234.5678, 23.0), format_estimate(0.1234567, None)
        ('1235 ± 23', '0.1235')
    """
    value = float(value)
    if stderr is None or not math.isfinite(float(stderr)) or float(stderr) <= 0:
        return format_number(value)
    stderr = float(stderr)
    decimals = 1 - math.floor(math.log10(stderr))
    if round(stderr, decimals) >= 10 ** (2 - decimals):  # 0.0996 rounds up to 0.10
        decimals -= 1
    shown = max(decimals, 0)
    return f"{round(value, decimals):.{shown}f} ± {round(stderr, decimals):.{shown}f}"


def mean_estimate(values: np.ndarray) -> str:
    """The mean of ``values`` ± its standard error (``sd / sqrt(n)``), formatted; where
    some values are not finite, the mean they make (``-inf``, ``nan``, ...) and then
    how many they are and the mean of the others.

    Example:
        >>> mean_estimate(np.array([-7.0, -7.5, -8.0])), mean_estimate(np.array([-7.0, -np.inf]))
        ('-7.50 ± 0.29', '-inf (1 of 2 values not finite; the others -7)')
    """
    values = np.asarray(values, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    if values.size == 0:
        return "n/a"
    stderr = finite.std(ddof=1) / math.sqrt(finite.size) if finite.size > 1 else None
    if finite.size == values.size:
        return format_estimate(finite.mean(), stderr)
    with np.errstate(invalid="ignore"):
        overall = format_number(float(values.mean()))
    others = f"; the others {format_estimate(finite.mean(), stderr)}" if finite.size else ""
    return f"{overall} ({values.size - finite.size} of {values.size} values not finite{others})"


# ----- html helpers -----


def figure_html(fig: Figure, alt: str = "") -> str:
    """A matplotlib figure as an embedded PNG ``<img>``."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def pyplot_figure_html(axes, alt: str) -> str:
    """Like :func:`figure_html` for axes that ArviZ drew with pyplot; closes the figure."""
    import matplotlib.pyplot as plt

    fig = np.atleast_1d(axes).ravel()[0].figure
    html_img = figure_html(fig, alt)
    plt.close(fig)
    return html_img


def table_html(frame) -> str:
    """A pandas frame as a table, floats to four significant digits."""
    return frame.to_html(float_format=lambda v: f"{v:.4g}", border=0)


def rows_html(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """A table of ``rows`` (numbers formatted by :func:`format_number`)."""
    head = ("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            if header else "")
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_number(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def collapsed(summary: str, content: str, open_: bool = False) -> str:
    """``content`` inside ``<details>``, folded unless ``open_``."""
    flag = " open" if open_ else ""
    return f"<details{flag}><summary>{html.escape(summary)}</summary>{content}</details>"


def note_html(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>' if text else ""


def square_side(num_features: int) -> int | None:
    """The side of a square image with ``num_features`` pixels, or ``None``."""
    side = math.isqrt(int(num_features))
    return side if side > 1 and side * side == num_features else None


def image_grid(images: np.ndarray, columns: int = 10, pad: float = 1.0) -> np.ndarray:
    """Rows of flat square images ``[n, side * side]`` tiled into one array, ``columns``
    across, separated by one pixel of ``pad``.

    Example:
        >>> image_grid(np.zeros((12, 64)), columns=5).shape  # 3 rows of 5 images 8 x 8
        (26, 44)
    """
    images = np.asarray(images, dtype=float)
    side = square_side(images.shape[1])
    if side is None:
        raise ValueError(f"images must have a square number of features, got {images.shape[1]}")
    columns = min(columns, images.shape[0])
    rows = -(-images.shape[0] // columns)
    grid = np.full((rows * (side + 1) - 1, columns * (side + 1) - 1), pad)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (side + 1):r * (side + 1) + side,
             c * (side + 1):c * (side + 1) + side] = image.reshape(side, side)
    return grid


def image_panels_html(panels: Sequence[tuple[str, np.ndarray]], columns: int = 10,
                      alt: str = "images", width: float = 4.5) -> str:
    """Side-by-side grids of flat square images, one titled panel each, ``width`` inches
    wide (pixel values in [0, 1] are drawn as they are; other ranges are scaled per
    panel)."""
    grids, scales = [], []
    for _, images in panels:
        images = np.asarray(images, dtype=float)
        low, high = (0.0, 1.0) if images.min() >= 0 and images.max() <= 1 else (
            float(images.min()), float(images.max()))
        grids.append(image_grid(images, columns, pad=low))  # gray_r: low is white
        scales.append((low, high))
    aspect = max(g.shape[0] / g.shape[1] for g in grids)
    fig = Figure(figsize=(width * len(panels), width * aspect + 0.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, _), grid, (low, high) in zip(axes, panels, grids, scales):
        ax.imshow(grid, cmap="gray_r", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    return figure_html(fig, alt)


def band_plot(ax, time, mean, low, high, label: str) -> None:
    """A line with a shaded band between ``low`` and ``high``."""
    ax.fill_between(time, low, high, alpha=0.3, lw=0)
    ax.plot(time, mean, lw=1, label=label)


# ----- generic sections -----

KEY_ATTRS = ("test_log_likelihood", "log_evidence", "log_partition", "rate", "distortion",
             "log_likelihood", "rmse", "accuracy", "nll", "ece")
"""Run attributes (``posterior.attrs``) shown among the key figures, with their standard
error when an attribute ``<name>_se`` or ``<name>_stderr`` is present (``test_stderr``
for ``test_log_likelihood``, as in the commands' ``metrics.json``)."""


KEY_NOTES = {
    "test_log_likelihood": "nats per test point, importance-sampled",
    "log_evidence": "nats, log p̂(y_1:T) of the particle filter",
    "log_partition": "nats, log Ẑ of BiHM's model p* = √(p q) / Z (at most 0)",
    "log_likelihood": "nats per point",
}
"""What each of :data:`KEY_ATTRS` is, beside its value."""


def _stderr(attrs: dict[str, Any], name: str) -> float | None:
    aliases = ("test_stderr",) if name == "test_log_likelihood" else ()
    for key in (f"{name}_se", f"{name}_stderr", *aliases):
        if isinstance(attrs.get(key), (int, float, np.number)):
            return float(attrs[key])
    return None


def _attrs(idata: az.InferenceData) -> dict[str, Any]:
    attrs = {}
    for group in ("posterior", "sample_stats"):
        if group in idata.groups():
            attrs.update(getattr(idata, group).attrs)
    return {k: v for k, v in attrs.items() if k not in ("created_at", "arviz_version")}


@register_key_figures(order=ORDER_KEY)
def _run_key_figures(idata: az.InferenceData) -> list[KeyFigure]:
    attrs = _attrs(idata)
    figures = []
    for name in KEY_ATTRS:
        if name in attrs and isinstance(attrs[name], (int, float, np.number)):
            value = format_estimate(attrs[name], _stderr(attrs, name))
            figures.append(KeyFigure(name.replace("_", " "), value, KEY_NOTES.get(name, "")))
    return figures


@register_key_figures(groups=("log_likelihood",), order=ORDER_KEY + 1)
def _predictive_key_figures(idata: az.InferenceData) -> list[KeyFigure] | None:
    """The log pointwise predictive density of each observed variable, per point
    (Gelman, Hwang & Vehtari 2014, eq. 5 over the points): on held-out data when
    those were the data given to the conversion."""
    if "test_log_likelihood" in _attrs(idata):
        return None
    figures = []
    for name, variable in idata.log_likelihood.data_vars.items():
        values = np.asarray(variable.values, dtype=float)
        if values.ndim < 3:
            continue
        draws = values.shape[0] * values.shape[1]
        flat = values.reshape(draws, -1)
        peak = flat.max(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lppd = peak + np.log(np.exp(flat - peak).mean(0))
        figures.append(KeyFigure(
            f"log predictive density of {name}", mean_estimate(lppd),
            f"nats per point: the mean over {flat.shape[1]} points of log mean p({name}_i | θ) "
            f"over {draws} draws"))
    return figures


@contextlib.contextmanager
def quiet_arviz() -> Iterator[None]:
    """ArviZ's warnings and its log messages (``Shape validation failed`` for R-hat of
    one chain goes to its logger, on stderr) held back while a report computes."""
    logger = getattr(az, "_log", None) or logging.getLogger("arviz")  # its own Logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


RHAT_LIMIT, ESS_PER_CHAIN = 1.01, 100
"""R-hat above 1.01, or a bulk ESS under 100 per chain, mark a run whose chains have not
mixed (Vehtari et al. 2021, *Rank-normalization, folding, and localization*, section
4): those key figures are shown as warnings."""


@register_key_figures(groups=("posterior",), order=ORDER_DIAGNOSTICS)
def _chain_key_figures(idata: az.InferenceData) -> list[KeyFigure] | None:
    posterior = idata.posterior
    if "data" in posterior.dims or posterior.sizes.get("draw", 0) < 4:
        return None
    chains = posterior.sizes.get("chain", 1)
    with quiet_arviz():
        ess = np.concatenate([np.ravel(v) for v in
                              az.ess(posterior, method="bulk").data_vars.values()])
        rhat = (np.concatenate([np.ravel(v) for v in az.rhat(posterior).data_vars.values()])
                if chains > 1 else None)
    total = chains * posterior.sizes["draw"]
    figures = []
    if rhat is not None:
        over = int((rhat > RHAT_LIMIT).sum())
        figures.append(KeyFigure("max R-hat", format_number(np.nanmax(rhat)),
                                 f"{over} of {rhat.size} components above {RHAT_LIMIT}",
                                 warning=over > 0))
    lowest = float(np.nanmin(ess)) if np.isfinite(ess).any() else math.nan
    where = (f"of {total} draws in {chains} chains" if chains > 1 else
             f"of {total} draws in one chain (from its two halves; R-hat needs several "
             "chains)")
    figures.append(KeyFigure("min bulk ESS", format_number(lowest, 3),
                             f"{where}; under {ESS_PER_CHAIN} per chain the chains have not "
                             "mixed", warning=not lowest >= ESS_PER_CHAIN * chains))
    return figures


@register_section(groups=("posterior",), order=ORDER_DETAILS)
def _attributes(idata: az.InferenceData) -> str | None:
    attrs = _attrs(idata)
    if not attrs:
        return None
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(format_number(v))}</td></tr>"
        for k, v in attrs.items()
    )
    return "<h2>Run</h2>" + collapsed(f"{len(attrs)} run attributes",
                                      f"<table>{rows}</table>", open_=len(attrs) <= 12)


@register_section(groups=("posterior",), order=ORDER_DETAILS + 1)
def _summary(idata: az.InferenceData, max_data: int = 5, max_rows: int = 60) -> str | None:
    posterior = idata.posterior
    notes = []
    if "data" in posterior.dims and posterior.sizes["data"] > max_data:
        posterior = posterior.isel(data=slice(0, max_data))
        notes.append(f"first {max_data} of {idata.posterior.sizes['data']} data points")
    multi_chain = posterior.sizes.get("chain", 1) > 1
    with quiet_arviz():
        summary = az.summary(posterior, kind="all")
    if not multi_chain:
        summary = summary.drop(columns="r_hat", errors="ignore")
        notes.append("one chain: ESS and MCSE from its two halves, R-hat needs several chains")
    rows = len(summary)
    if rows > max_rows:
        notes.append(f"first {max_rows} of {rows} rows")
        summary = summary.iloc[:max_rows]
    return ("<h2>Posterior summary (ArviZ)</h2>"
            + collapsed(f"{rows} rows: mean, sd, HDI, MCSE, ESS"
                        + (", R-hat" if multi_chain else ""),
                        note_html("; ".join(notes)) + table_html(summary), open_=rows <= 10))


def _curve_panels(dataset, variables: list[str]) -> Figure:
    cols = min(3, len(variables))
    rows = -(-len(variables) // cols)
    fig = Figure(figsize=(4 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, variables):
        values = np.asarray(dataset[name].values, dtype=float)
        dim = dataset[name].dims[0]
        x = np.asarray(dataset[dim].values)
        ax.plot(x, values, lw=1)
        if dim == "step" and values.size > 50:
            width = max(values.size // 50, 2)
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(x[width - 1:], smooth, lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(dim)
    for ax in axes[len(variables):]:
        ax.set_visible(False)
    return fig


@register_section(groups=("training_history",), order=ORDER_TRAINING)
def _training(idata: az.InferenceData) -> str | None:
    """Every scalar quantity logged per epoch or per step (vector-valued quantities,
    such as learned parameter vectors, are left to the families' sections)."""
    history = idata.training_history
    panels = [v for v in history.data_vars if history[v].dims in (("epoch",), ("step",))]
    if not panels:
        return None
    notes = []
    if history.attrs.get("best_epoch") is not None:
        notes.append(f"best epoch {history.attrs['best_epoch']}")
    if history.attrs.get("stopped_early"):
        notes.append("stopped early")
    return ("<h2>Training history</h2>" + note_html("; ".join(notes))
            + figure_html(_curve_panels(history, panels), "training curves"))


# ----- the page -----


def key_figures(idata: az.InferenceData) -> list[KeyFigure]:
    """The key figures of every registered builder that applies, in order."""
    figures: list[KeyFigure] = []
    for entry in _KEY_FIGURES:
        if entry.applies(idata):
            figures.extend(entry.build(idata) or ())
    return figures


def _key_box(figures: Sequence[KeyFigure]) -> str:
    if not figures:
        return ""
    rows = "".join(
        f"<tr{' class=warn' if f.warning else ''}><th>{html.escape(f.label)}</th>"
        f"<td class='value'>{html.escape(f.value)}</td>"
        f"<td class='note'>{html.escape(f.note)}</td></tr>"
        for f in figures
    )
    return f"<div class='key'><table>{rows}</table></div>"


def render(idata: az.InferenceData) -> str:
    """The key figures, then the HTML of every registered section that applies to
    ``idata``, lower orders first."""
    parts = [_key_box(key_figures(idata))]
    for section in _SECTIONS:
        if section.applies(idata):
            fragment = section.build(idata)
            if fragment:
                parts.append(fragment)
    return "\n".join(p for p in parts if p)


def page(title: str, body: str) -> str:
    """A complete HTML document (inline style, no external resource)."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>"
    )


def report(
    idata: az.InferenceData, path: str | os.PathLike, title: str = "posterity report"
) -> Path:
    """Write a self-contained HTML report of ``idata`` to ``path``; returns the path.

    Example:
        >>> report(vi.to_inference_data(test[:100]), "out/report.html")  # doctest: +SKIP
    """
    if not isinstance(idata, az.InferenceData):
        hint = (" (an engine: pass engine.to_inference_data(...))"
                if callable(getattr(idata, "to_inference_data", None)) else "")
        raise TypeError(f"report needs an arviz.InferenceData, got "
                        f"{type(idata).__name__}{hint}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, render(idata)), encoding="utf-8")
    return path


class IndexEntry(NamedTuple):
    """A row of the index of :func:`combined_report`: a test, its outcome (``passed``,
    ``failed``, ``skipped``), its duration in seconds and the headings of its entries."""

    name: str
    outcome: str
    seconds: float = 0.0
    headings: tuple[str, ...] = ()


def _anchor(i: int) -> str:
    return f"entry-{i}"


def combined_report(
    entries: Iterable[tuple[str, az.InferenceData, str]],
    path: str | os.PathLike,
    title: str = "posterity diagnostics",
    tests: Iterable[IndexEntry] = (),
) -> Path:
    """One page for several ``(heading, idata, note)`` entries, led by an index of
    ``tests`` with their outcome and links to their entries (``pytest
    --diagnostics-report DIR`` writes it)."""
    entries = list(entries)
    anchors: dict[str, str] = {}
    for i, (heading, _, _) in enumerate(entries):
        anchors.setdefault(heading, _anchor(i))
    body = []
    tests = list(tests)
    if tests:
        failed = sum(t.outcome == "failed" for t in tests)
        rows = []
        for t in tests:
            css = {"passed": "good", "failed": "bad"}.get(t.outcome, "note")
            links = ", ".join(f"<a href='#{anchors[h]}'>{html.escape(h)}</a>"
                              for h in t.headings if h in anchors)
            rows.append(f"<tr><td style='text-align:left'>{html.escape(t.name)}</td>"
                        f"<td class='{css}'>{html.escape(t.outcome)}</td>"
                        f"<td>{t.seconds:.1f} s</td><td style='text-align:left'>{links}</td></tr>")
        body.append(
            f"<h2>Statistical tests: {len(tests) - failed} of {len(tests)} passed"
            f"{'' if not failed else f', {failed} failed'}</h2><table><tr><th>test</th>"
            f"<th>outcome</th><th>time</th><th>figures</th></tr>{''.join(rows)}</table>"
        )
    for i, (heading, idata, note) in enumerate(entries):
        body.append(f"<h2 id='{_anchor(i)}' style='border:0;font-size:1.4em'>"
                    f"{html.escape(heading)}</h2>")
        body.append(note_html(note))
        body.append(render(idata).replace("<h2>", "<h3>").replace("</h2>", "</h3>"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, "\n".join(body)), encoding="utf-8")
    return path
