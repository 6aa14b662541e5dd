"""Self-contained HTML reports of ``InferenceData``: tables and embedded PNG plots.

A report is a list of sections. Each section builder looks at an ``InferenceData``
and returns an HTML fragment, or ``None`` when the groups it describes are absent.
Engines add builders with :func:`register_section`.
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import arviz as az
import numpy as np
from matplotlib.figure import Figure

SectionBuilder = Callable[[az.InferenceData], "str | None"]
_SECTIONS: list[SectionBuilder] = []

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;margin-top:1.6em}
h3{font-size:1.05em}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}th{background:#f5f5f5}
img{max-width:100%}.note{color:#555;font-size:.9em}.bad{color:#b00}
"""


def register_section(builder: SectionBuilder) -> SectionBuilder:
    """Add a section builder to every report (usable as a decorator)."""
    _SECTIONS.append(builder)
    return builder


def figure_html(fig: Figure, alt: str = "") -> str:
    """A matplotlib figure as an embedded PNG ``<img>``."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def table_html(frame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.4g}", border=0)


@register_section
def _attributes(idata: az.InferenceData) -> str | None:
    if "posterior" not in idata.groups():
        return None
    attrs = {k: v for k, v in idata.posterior.attrs.items() if k not in ("created_at",)}
    if not attrs:
        return None
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in attrs.items()
    )
    return f"<h2>Run</h2><table>{rows}</table>"


@register_section
def _summary(idata: az.InferenceData, max_data: int = 5, max_rows: int = 60) -> str | None:
    if "posterior" not in idata.groups():
        return None
    posterior = idata.posterior
    note = ""
    if "data" in posterior.dims and posterior.sizes["data"] > max_data:
        posterior = posterior.isel(data=slice(0, max_data))
        note = f"first {max_data} of {idata.posterior.sizes['data']} data points; "
    multi_chain = posterior.sizes.get("chain", 1) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(posterior, kind="all" if multi_chain else "stats")
    if len(summary) > max_rows:
        note += f"first {max_rows} of {len(summary)} rows; "
        summary = summary.iloc[:max_rows]
    if not multi_chain:
        note += "one chain: R-hat needs several"
    return (
        "<h2>Posterior summary (ArviZ)</h2>"
        f'<p class="note">{html.escape(note)}</p>{table_html(summary)}'
    )


@register_section
def _amortization(idata: az.InferenceData) -> str | None:
    if "amortization" not in idata.groups():
        return None
    group = idata.amortization
    khat = np.asarray(group["pareto_k"].values)
    good, bad = float(group.attrs.get("khat_good", 0.5)), float(group.attrs.get("khat_bad", 0.7))
    counts = [
        (f"k ≤ {good:.1f} (good)", int((khat <= good).sum())),
        (f"{good:.1f} < k ≤ {bad:.1f} (poor)", int(((khat > good) & (khat <= bad)).sum())),
        (f"k > {bad:.1f} (failed)", int((khat > bad).sum())),
    ]
    rows = "".join(
        f"<tr><th>{label}</th><td>{n}</td><td>{100 * n / khat.size:.1f}%</td></tr>"
        for label, n in counts
    )
    fig = Figure(figsize=(9, 3.2))
    ax_k, ax_ll = fig.subplots(1, 2)
    ax_k.scatter(np.arange(khat.size), khat, s=8, c=np.where(khat > bad, "C3", "C0"))
    for level, style in ((good, ":"), (bad, "--")):
        ax_k.axhline(level, color="C3", linestyle=style, linewidth=1)
    ax_k.set_xlabel("data point")
    ax_k.set_ylabel("PSIS k̂")
    ax_k.set_title("where amortization fails (Yao et al. 2018)")
    ll = np.asarray(group["log_likelihood"].values)
    ax_ll.scatter(ll, khat, s=8)
    ax_ll.set_xlabel("importance-sampled log p(x) (nats)")
    ax_ll.set_ylabel("PSIS k̂")
    n = int(group.attrs.get("num_samples", 0))
    return (
        "<h2>Amortization: PSIS k̂ per data point</h2>"
        f'<p class="note">S = {n} guide draws per data point; mean log p(x) = '
        f"{ll.mean():.3f} nats (importance-sampled with the same draws).</p>"
        f"<table>{rows}</table>{figure_html(fig, 'k-hat')}"
    )


@register_section
def _training(idata: az.InferenceData) -> str | None:
    if "training_history" not in idata.groups():
        return None
    history = idata.training_history
    per_epoch = [v for v in history.data_vars if history[v].dims == ("epoch",)]
    per_step = [v for v in history.data_vars if history[v].dims == ("step",)]
    panels = per_epoch + per_step
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, panels):
        values = np.asarray(history[name].values)
        dim = history[name].dims[0]
        ax.plot(np.asarray(history[dim].values), values, lw=1)
        if dim == "step" and values.size > 50:
            width = max(values.size // 50, 2)
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(np.asarray(history[dim].values)[width - 1 :], smooth, lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(dim)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return f"<h2>Training history</h2>{figure_html(fig, 'training curves')}"


@register_section
def _rate_distortion(idata: az.InferenceData) -> str | None:
    if "rate_distortion" not in idata.groups():
        return None
    curve = idata.rate_distortion
    beta = np.asarray(curve["beta"].values)
    rate, distortion = np.asarray(curve["rate"].values), np.asarray(curve["distortion"].values)
    fig = Figure(figsize=(9, 3.4))
    ax_rd, ax_beta = fig.subplots(1, 2)
    points = ax_rd.scatter(rate, distortion, c=np.log10(beta), cmap="viridis", s=18)
    ax_rd.plot(rate, distortion, lw=0.8, color="0.5")
    fig.colorbar(points, ax=ax_rd, label="log10 β")
    ax_rd.set_xlabel("rate (nats)")
    ax_rd.set_ylabel("distortion (nats)")
    ax_beta.semilogx(beta, rate, "o-", label="rate", ms=3)
    ax_beta.semilogx(beta, distortion, "o-", label="distortion", ms=3)
    ax_beta.semilogx(beta, rate + distortion, "--", label="rate + distortion (-ELBO)", lw=1)
    ax_beta.set_xlabel("β")
    ax_beta.set_ylabel("nats")
    ax_beta.legend(fontsize=7)
    rows = "".join(
        f"<tr><td>{b:.3g}</td><td>{r:.3f}</td><td>{d:.3f}</td></tr>"
        for b, r, d in zip(beta, rate, distortion)
    )
    return (
        "<h2>Rate-distortion curve</h2>"
        f"{figure_html(fig, 'rate-distortion')}"
        f"<table><tr><th>β</th><th>rate</th><th>distortion</th></tr>{rows}</table>"
    )


def _scalar_components(idata: az.InferenceData, limit: int = 6) -> az.InferenceData | None:
    """Up to ``limit`` scalar components of the posterior, for trace and rank plots."""
    posterior = idata.posterior
    if "data" in posterior.dims or posterior.sizes.get("chain", 1) < 2:
        return None
    components = {}
    for name, variable in posterior.data_vars.items():
        values = np.asarray(variable.values)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        for j in range(min(2, flat.shape[-1])):
            label = name if flat.shape[-1] == 1 else f"{name}[{j}]"
            components[label] = flat[:, :, j]
            if len(components) == limit:
                return az.from_dict(posterior=components)
    return az.from_dict(posterior=components) if components else None


def _pyplot_figure_html(axes, alt: str) -> str:
    import matplotlib.pyplot as plt

    fig = np.atleast_1d(axes).ravel()[0].figure
    html_img = figure_html(fig, alt)
    plt.close(fig)
    return html_img


@register_section
def _mcmc_traces(idata: az.InferenceData) -> str | None:
    if "posterior" not in idata.groups():
        return None
    small = _scalar_components(idata)
    if small is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traces = az.plot_trace(small, compact=False, show=False, figsize=(10, 1.8 * len(
            small.posterior.data_vars)))
        ranks = az.plot_rank(small, show=False, figsize=(10, 2.2 * -(-len(
            small.posterior.data_vars) // 3)))
    return (
        "<h2>Chains: traces and rank plots</h2>"
        '<p class="note">Rank plots are near uniform when the chains mix (Vehtari et al. '
        "2021); a few scalar components are shown.</p>"
        f"{_pyplot_figure_html(traces, 'traces')}{_pyplot_figure_html(ranks, 'ranks')}"
    )


@register_section
def _step_sizes(idata: az.InferenceData) -> str | None:
    if "sample_stats" not in idata.groups() or "step_size" not in idata.sample_stats:
        return None
    stats = idata.sample_stats
    step = np.asarray(stats["step_size"].values)[0]
    update = np.asarray(stats["update"].values)[0] if "update" in stats else np.arange(step.size)
    fig = Figure(figsize=(9, 2.6))
    ax = fig.subplots()
    ax.plot(update, step, ".", ms=2)
    ax.set_xlabel("update")
    ax.set_ylabel("step size")
    ax.set_title("step size of the update behind each draw")
    temperature = stats.attrs.get("temperature", idata.posterior.attrs.get("temperature"))
    note = f"temperature {temperature}" if temperature is not None else ""
    return (f"<h2>Step-size schedule</h2><p class=\"note\">{html.escape(str(note))}</p>"
            f"{figure_html(fig, 'step sizes')}")


@register_section
def _model_samples(idata: az.InferenceData) -> str | None:
    if "model_samples" not in idata.groups():
        return None
    samples = np.asarray(idata.model_samples["x"].values)[:64]
    side = int(round(np.sqrt(samples.shape[1])))
    columns = 16
    rows = -(-samples.shape[0] // columns)
    if side * side == samples.shape[1]:  # square images: a grid
        grid = np.ones((rows * (side + 1), columns * (side + 1)))
        for i, image in enumerate(samples):
            r, c = divmod(i, columns)
            grid[r * (side + 1):r * (side + 1) + side,
                 c * (side + 1):c * (side + 1) + side] = image.reshape(side, side)
    else:
        grid = samples
    fig = Figure(figsize=(10, 10 * grid.shape[0] / grid.shape[1] + 0.3))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    return (f"<h2>Samples from the model</h2><p class=\"note\">{samples.shape[0]} ancestral "
            "draws (pixel probabilities of the last layer).</p>"
            f"{figure_html(fig, 'model samples')}")


def _band_plot(ax, time, mean, low, high, label: str) -> None:
    ax.fill_between(time, low, high, alpha=0.3, lw=0)
    ax.plot(time, mean, lw=1, label=label)


@register_section
def _filtering(idata: az.InferenceData) -> str | None:
    if "filter" not in idata.groups():
        return None
    group = idata.filter
    time = np.asarray(group["time"].values)
    mean, var = np.asarray(group["filter_mean"].values), np.asarray(group["filter_var"].values)
    ess, resampled = np.asarray(group["ess"].values), np.asarray(group["resampled"].values)
    fig = Figure(figsize=(10, 3.2))
    ax_state, ax_ess = fig.subplots(1, 2)
    for j in range(min(3, mean.shape[1])):
        sd = np.sqrt(var[:, j])
        _band_plot(ax_state, time, mean[:, j], mean[:, j] - 2 * sd, mean[:, j] + 2 * sd,
                   f"x[{j}]")
    ax_state.set_xlabel("time")
    ax_state.set_title("filtering mean ± 2 sd", fontsize=9)
    ax_state.legend(fontsize=7)
    ax_ess.plot(time, ess, lw=1)
    ax_ess.plot(time[resampled > 0], ess[resampled > 0], "|", color="C3", ms=6,
                label="resampled before moving")
    ax_ess.set_xlabel("time")
    ax_ess.set_ylabel("ESS")
    ax_ess.set_title("effective sample size", fontsize=9)
    ax_ess.legend(fontsize=7)
    log_evidence = group.attrs.get("log_evidence")
    note = (f"log Ẑ = {log_evidence:.3f}; " if log_evidence is not None else "") + (
        f"{int(resampled.sum())} of {time.size} steps resampled; min ESS {ess.min():.1f}")
    return (f"<h2>Particle filter</h2><p class=\"note\">{html.escape(note)}</p>"
            f"{figure_html(fig, 'filtering')}")


@register_section
def _smoothed_states(idata: az.InferenceData) -> str | None:
    if "posterior" not in idata.groups() or "x" not in idata.posterior:
        return None
    paths = idata.posterior["x"]
    if "time" not in paths.dims:
        return None
    values = np.asarray(paths.transpose("chain", "draw", "time", ...).values)
    draws = values.reshape(-1, values.shape[2], values.shape[3] if values.ndim > 3 else 1)
    time = np.asarray(paths["time"].values)
    low, median, high = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    for j in range(min(3, draws.shape[2])):
        _band_plot(ax, time, median[:, j], low[:, j], high[:, j], f"x[{j}]")
    ax.set_xlabel("time")
    ax.set_title("smoothed states: median and 90% band of the sampled paths", fontsize=9)
    ax.legend(fontsize=7)
    return (f"<h2>Smoothed states</h2><p class=\"note\">{draws.shape[0]} paths from "
            f"{values.shape[0]} chains.</p>{figure_html(fig, 'smoothed states')}")


@register_section
def _parameter_traces(idata: az.InferenceData) -> str | None:
    if "learning_history" not in idata.groups():
        return None
    history = idata.learning_history
    names = list(history.data_vars)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    step = np.asarray(history["step"].values)
    for ax, name in zip(axes, names):
        values = np.asarray(history[name].values).reshape(step.size, -1)
        ax.plot(step, values[:, :5], lw=1)
        shown = "" if values.shape[1] <= 5 else f" (5 of {values.shape[1]})"
        ax.set_title(name + shown, fontsize=9)
        ax.set_xlabel("step")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return f"<h2>Parameter learning</h2>{figure_html(fig, 'parameter traces')}"


def render(idata: az.InferenceData) -> str:
    """The HTML fragments of every registered section that applies to ``idata``."""
    parts = []
    for builder in _SECTIONS:
        fragment = builder(idata)
        if fragment:
            parts.append(fragment)
    return "\n".join(parts)


def page(title: str, body: str) -> str:
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, render(idata)), encoding="utf-8")
    return path


def combined_report(
    entries: Iterable[tuple[str, az.InferenceData, str]],
    path: str | os.PathLike,
    title: str = "posterity diagnostics",
) -> Path:
    """One page for several ``(heading, idata, note)`` entries (used by the tests)."""
    body = []
    for heading, idata, note in entries:
        body.append(f"<h2 style='border:0;font-size:1.4em'>{html.escape(heading)}</h2>")
        if note:
            body.append(f'<p class="note">{html.escape(note)}</p>')
        body.append(render(idata).replace("<h2>", "<h3>").replace("</h2>", "</h3>"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(title, "\n".join(body)), encoding="utf-8")
    return path
