"""Report sections of sequential Monte Carlo: the filter's states with their bands and
its ESS over time, the smoothed states of particle Gibbs paths, smoother estimates, and
the parameters learned by score ascent.

Registered with :mod:`posterity.infer.report` when :mod:`posterity.infer.smc` is
imported. They read ``filtering`` (:meth:`FilterResult.to_inference_data`), a
``posterior`` ``x`` with a ``time`` dim (:meth:`ParticleGibbsResult.to_inference_data`),
``smoothing`` (:meth:`SmoothingResult.to_inference_data`) and the vector-valued
variables of ``training_history`` (learned parameters by ``step``; the scalar curves are
drawn by the generic training section).

Example:
    >>> import arviz as az, numpy as np, xarray as xr
    >>> from posterity.infer.report import render
    >>> T = 20
    >>> filtering = xr.Dataset(
    ...     {"filter_mean": (("time", "state_dim"), np.zeros((T, 1))),
    ...      "filter_var": (("time", "state_dim"), np.ones((T, 1))),
    ...      "ess": ("time", np.full(T, 50.0)), "resampled": ("time", np.zeros(T, int))},
    ...     coords={"time": np.arange(T)}, attrs={"log_evidence": -31.234567})
    >>> page = render(az.InferenceData(filtering=filtering))
    >>> "Particle filter" in page and "-31.23" in page
    True
"""

from __future__ import annotations

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from ..report import (
    ORDER_FIRST,
    ORDER_KEY,
    ORDER_TRAINING,
    KeyFigure,
    band_plot,
    collapsed,
    figure_html,
    format_number,
    note_html,
    register_key_figures,
    register_section,
    rows_html,
)


@register_key_figures(groups=("filtering",), order=ORDER_KEY + 2)
def _filter_key_figures(idata: az.InferenceData) -> list[KeyFigure]:
    group = idata.filtering
    ess = np.asarray(group["ess"].values)
    figures = []
    attrs = idata.posterior.attrs if "posterior" in idata.groups() else {}
    if "log_evidence" in group.attrs and "log_evidence" not in attrs:
        figures.append(KeyFigure("log evidence", format_number(group.attrs["log_evidence"]),
                                 "log Ẑ of the particle filter"))
    resampled = int(np.asarray(group["resampled"].values).sum()) if "resampled" in group else 0
    figures.append(KeyFigure("filter ESS", f"min {format_number(ess.min(), 3)}, median "
                             f"{format_number(float(np.median(ess)), 3)}",
                             f"over {ess.size} time steps; {resampled} resampled"))
    return figures


@register_section(groups=("filtering",), order=ORDER_FIRST)
def _filtering(idata: az.InferenceData, components: int = 3) -> str | None:
    group = idata.filtering
    time = np.asarray(group["time"].values)
    mean, var = np.asarray(group["filter_mean"].values), np.asarray(group["filter_var"].values)
    ess = np.asarray(group["ess"].values)
    resampled = np.asarray(group["resampled"].values) > 0 if "resampled" in group else None
    fig = Figure(figsize=(11, 3.4))
    ax_state, ax_ess = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for j in range(min(components, mean.shape[1])):
        sd = np.sqrt(var[:, j])
        band_plot(ax_state, time, mean[:, j], mean[:, j] - 2 * sd, mean[:, j] + 2 * sd,
                  f"x[{j}]")
    ax_state.set_xlabel("time")
    ax_state.set_title("filtered states: E[x_t | y_0:t] ± 2 sd", fontsize=9)
    ax_state.legend(fontsize=7)
    ax_ess.plot(time, ess, lw=1)
    if resampled is not None and resampled.any():
        ax_ess.plot(time[resampled], ess[resampled], "|", color="C3", ms=6,
                    label="resampled before moving")
        ax_ess.legend(fontsize=7)
    ax_ess.set_ylim(bottom=0)
    ax_ess.set_xlabel("time")
    ax_ess.set_ylabel("ESS")
    ax_ess.set_title("effective sample size over time", fontsize=9)
    shown = "" if mean.shape[1] <= components else f"; {components} of {mean.shape[1]} states"
    return ("<h2>Particle filter</h2>"
            + note_html(f"bands: ± 2 filtering standard deviations{shown}")
            + figure_html(fig, "filtering"))


@register_section(groups=("posterior",), order=ORDER_FIRST + 1)
def _smoothed_states(idata: az.InferenceData, components: int = 3) -> str | None:
    if "x" not in idata.posterior or "time" not in idata.posterior["x"].dims:
        return None
    paths = idata.posterior["x"]
    values = np.asarray(paths.transpose("chain", "draw", "time", ...).values)
    draws = values.reshape(-1, values.shape[2], values.shape[3] if values.ndim > 3 else 1)
    time = np.asarray(paths["time"].values)
    low, median, high = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    fig = Figure(figsize=(11, 3.4))
    ax = fig.subplots()
    for j in range(min(components, draws.shape[2])):
        band_plot(ax, time, median[:, j], low[:, j], high[:, j], f"x[{j}]")
    if "filtering" in idata.groups():
        mean = np.asarray(idata.filtering["filter_mean"].values)
        for j in range(min(components, mean.shape[1])):
            ax.plot(np.asarray(idata.filtering["time"].values), mean[:, j], lw=0.8,
                    ls="--", color="0.3", label="filtered mean" if j == 0 else None)
    ax.set_xlabel("time")
    ax.set_title("smoothed states: median and 90% band of the sampled paths", fontsize=9)
    ax.legend(fontsize=7)
    return ("<h2>Smoothed states</h2>"
            + note_html(f"{draws.shape[0]} paths from {values.shape[0]} chains")
            + figure_html(fig, "smoothed states"))


@register_section(groups=("smoothing",), order=ORDER_FIRST + 2)
def _smoothing(idata: az.InferenceData) -> str | None:
    group = idata.smoothing
    if "estimate" not in group:
        return None
    estimate = np.asarray(group["estimate"].values).ravel()
    note = (f"log Ẑ = {format_number(group.attrs['log_evidence'])}"
            if "log_evidence" in group.attrs else "")
    return ("<h2>Smoothed additive functional</h2>" + note_html(note)
            + rows_html(enumerate(estimate), ("functional", "E[Σ_t h_t | y]")))


@register_section(groups=("training_history",), order=ORDER_TRAINING + 1)
def _parameter_traces(idata: az.InferenceData, components: int = 5) -> str | None:
    """Learned parameter vectors by step: the variables of ``training_history`` with a
    dim beside ``step`` (the generic section draws the scalar ones)."""
    history = idata.training_history
    names = [v for v in history.data_vars
             if history[v].dims[:1] == ("step",) and len(history[v].dims) == 2]
    if not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    step = np.asarray(history["step"].values)
    final = []
    for ax, name in zip(axes, names):
        values = np.asarray(history[name].values).reshape(step.size, -1)
        ax.plot(step, values[:, :components], lw=1)
        shown = "" if values.shape[1] <= components else f" ({components} of {values.shape[1]})"
        ax.set_title(name + shown, fontsize=9)
        ax.set_xlabel("step")
        tail = values[-max(1, step.size // 5):]
        for j in range(values.shape[1]):
            label = name if values.shape[1] == 1 else f"{name}[{j}]"
            final.append((label, values[-1, j], tail[:, j].mean(), tail[:, j].std()))
    for ax in axes[len(names):]:
        ax.set_visible(False)
    table = rows_html(final, ("parameter", "last value", "mean of last 20%", "sd of last 20%"))
    return ("<h2>Learned parameters</h2>" + figure_html(fig, "parameter traces")
            + collapsed(f"final values of {len(final)} parameter components", table,
                        open_=len(final) <= 12))
