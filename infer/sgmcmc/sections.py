"""Report sections of MCMC runs (SG-MCMC kernels through ``pyro.infer.MCMC``, and any
other sampler with several chains): predictions against the held-out data, traces and
rank plots of the components that mix worst, R-hat and ESS of every component, and the
step-size schedule.

Registered with :mod:`posterity.infer.report` when :mod:`posterity.infer.sgmcmc` is
imported.

Example:
    >>> import arviz as az, numpy as np
    >>> from posterity.infer.report import render
    >>> rng = np.random.default_rng(0)
    >>> idata = az.from_dict(posterior={"w": rng.normal(size=(2, 100, 3))},
    ...                      sample_stats={"step_size": np.full((2, 100), 1e-3)})
    >>> page = render(idata)
    >>> "Chains: traces and rank plots" in page and "Step-size schedule" in page
    True
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from ..report import (
    ORDER_DIAGNOSTICS,
    ORDER_FIRST,
    ORDER_TRAINING,
    figure_html,
    format_number,
    note_html,
    pyplot_figure_html,
    register_section,
)


def _chain_components(posterior) -> dict[str, np.ndarray]:
    """Every scalar component ``[chain, draw]`` of the variables without a ``time`` or
    ``data`` dim (paths and per-data-point latents have their own sections)."""
    components = {}
    for name, variable in posterior.data_vars.items():
        if {"time", "data"} & set(variable.dims):
            continue
        values = np.asarray(variable.values)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        for j in range(flat.shape[-1]):
            label = name if flat.shape[-1] == 1 else f"{name}[{j}]"
            components[label] = flat[:, :, j]
    return components


@register_section(groups=("posterior_predictive", "observed_data"), order=ORDER_FIRST)
def _predictions(idata: az.InferenceData, max_points: int = 300) -> str | None:
    shared = [v for v in idata.posterior_predictive.data_vars if v in idata.observed_data]
    if not shared:
        return None
    name = shared[0]
    predicted = np.asarray(idata.posterior_predictive[name].values)
    observed = np.asarray(idata.observed_data[name].values).ravel()
    draws = predicted.reshape(-1, observed.size)
    low, mean, high = np.quantile(draws, [0.05, 0.5, 0.95], axis=0)
    shown = slice(0, min(max_points, observed.size))
    fig = Figure(figsize=(10, 3.6))
    ax_fit, ax_cover = fig.subplots(1, 2)
    ax_fit.errorbar(observed[shown], mean[shown],
                    yerr=np.clip([mean[shown] - low[shown], high[shown] - mean[shown]], 0, None),
                    fmt="o", ms=2, lw=0.5, alpha=0.7)
    edges = [min(observed.min(), low.min()), max(observed.max(), high.max())]
    ax_fit.plot(edges, edges, color="0.5", lw=0.8)
    ax_fit.set_xlabel(f"observed {name}")
    ax_fit.set_ylabel("predicted (median, 90% interval)")
    ax_fit.set_title("posterior predictive against the data", fontsize=9)
    ranks = (draws < observed).mean(0)
    ax_cover.hist(ranks, bins=20, range=(0, 1), color="0.6")
    ax_cover.set_xlabel("fraction of predictive draws below the observation")
    ax_cover.set_title("calibration (PIT): uniform when calibrated", fontsize=9)
    covered = float(((observed >= low) & (observed <= high)).mean())
    return ("<h2>Predictions</h2>"
            + note_html(f"{observed.size} points; {100 * covered:.0f}% inside their 90% "
                        "predictive interval")
            + figure_html(fig, "predictions"))


@register_section(groups=("posterior",), order=ORDER_DIAGNOSTICS)
def _chains(idata: az.InferenceData, shown: int = 4) -> str | None:
    posterior = idata.posterior
    if posterior.sizes.get("chain", 1) < 2:
        return None
    components = _chain_components(posterior)
    if not components:
        return None
    small = az.from_dict(posterior=components)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(small)
        ess_bulk, ess_tail = az.ess(small, method="bulk"), az.ess(small, method="tail")
    labels = list(components)
    rhat_values = np.array([float(rhat[k]) for k in labels])
    worst = [labels[i] for i in np.argsort(-np.nan_to_num(rhat_values, nan=np.inf))[:shown]]
    parts = ["<h2>Chains: traces and rank plots</h2>"]
    if len(labels) > shown:
        bulk = np.array([float(ess_bulk[k]) for k in labels])
        tail = np.array([float(ess_tail[k]) for k in labels])
        fig = Figure(figsize=(10, 2.8))
        ax_rhat, ax_ess = fig.subplots(1, 2)
        ax_rhat.hist(rhat_values[np.isfinite(rhat_values)], bins=30, color="0.6")
        ax_rhat.axvline(1.01, color="C3", ls="--", lw=1)
        ax_rhat.set_xlabel("R-hat (rank-normalized)")
        ax_rhat.set_title(f"R-hat of all {len(labels)} components", fontsize=9)
        ax_ess.hist([bulk, tail], bins=30, label=["bulk", "tail"])
        ax_ess.set_xlabel("ESS")
        ax_ess.legend(fontsize=7)
        ax_ess.set_title("effective sample sizes", fontsize=9)
        parts.append(figure_html(fig, "R-hat and ESS"))
    parts.append(note_html(
        f"the {len(worst)} components with the highest R-hat ("
        + ", ".join(f"{k}: {format_number(float(rhat[k]))}" for k in worst)
        + "); rank plots are near uniform when the chains mix (Vehtari et al. 2021)"))
    chosen = az.from_dict(posterior={k: components[k] for k in worst})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traces = az.plot_trace(chosen, compact=False, show=False,
                               figsize=(10, 1.7 * len(worst)))
        ranks = az.plot_rank(chosen, show=False, figsize=(10, 2.2 * -(-len(worst) // 3)))
    parts.append(pyplot_figure_html(traces, "traces"))
    parts.append(pyplot_figure_html(ranks, "ranks"))
    return "".join(parts)


@register_section(groups=("sample_stats",), order=ORDER_TRAINING + 2)
def _step_sizes(idata: az.InferenceData) -> str | None:
    stats = idata.sample_stats
    if "step_size" not in stats:
        return None
    step = np.asarray(stats["step_size"].values)[0]
    update = np.asarray(stats["update"].values)[0] if "update" in stats else np.arange(step.size)
    fig = Figure(figsize=(10, 2.6))
    ax = fig.subplots()
    ax.plot(update, step, ".", ms=2)
    ax.set_xlabel("update" if "update" in stats else "draw")
    ax.set_ylabel("step size")
    ax.set_title("step size of the update behind each draw", fontsize=9)
    attrs = idata.posterior.attrs if "posterior" in idata.groups() else {}
    temperature = stats.attrs.get("temperature", attrs.get("temperature"))
    note = f"temperature {format_number(temperature)}" if temperature is not None else ""
    return "<h2>Step-size schedule</h2>" + note_html(note) + figure_html(fig, "step sizes")
