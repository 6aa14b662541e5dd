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
    if _discrete(observed, draws):
        return _discrete_predictions(name, observed, draws)
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


def _discrete(observed: np.ndarray, draws: np.ndarray, max_classes: int = 20) -> bool:
    """Counts or classes: integer values, at most ``max_classes`` of them."""
    return (np.array_equal(observed, np.round(observed)) and np.array_equal(draws, np.round(draws))
            and np.unique(observed).size <= max_classes)


def randomized_pit(observed: np.ndarray, draws: np.ndarray, seed: int = 0) -> np.ndarray:
    """``P(Y < y) + V P(Y = y)`` per point, ``V ~ U(0, 1)``, with ``P`` the fraction of
    predictive ``draws`` ``[S, n]``: uniform on (0, 1) when the predictive distribution
    is calibrated, for discrete outcomes too (Czado, Gneiting & Held 2009, eq. 1).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y, draws = rng.integers(0, 2, 4000), rng.integers(0, 2, (500, 4000))
        >>> round(float(randomized_pit(y, draws).mean()), 2)
        0.5
    """
    below, equal = (draws < observed).mean(0), (draws == observed).mean(0)
    return below + np.random.default_rng(seed).random(observed.shape) * equal


def _discrete_predictions(name: str, observed: np.ndarray, draws: np.ndarray) -> str:
    """Class frequencies against the predictive probabilities, and the randomized PIT
    ``P(Y < y) + V P(Y = y)``, ``V ~ U(0, 1)``, which is uniform under calibration for
    discrete outcomes as the plain PIT is not (Czado, Gneiting & Held 2009)."""
    classes = np.union1d(np.unique(observed), np.unique(draws))
    predicted = np.array([(draws == c).mean() for c in classes])
    frequency = np.array([(observed == c).mean() for c in classes])
    fig = Figure(figsize=(10, 3.6))
    ax_fit, ax_cover = fig.subplots(1, 2)
    positions = np.arange(classes.size)
    ax_fit.bar(positions - 0.2, frequency, width=0.4, label="observed", color="0.4")
    ax_fit.bar(positions + 0.2, predicted, width=0.4, label="predicted", color="C0")
    ax_fit.set_xticks(positions, [format_number(c) for c in classes])
    ax_fit.set_xlabel(f"{name}")
    ax_fit.set_ylabel("fraction of points")
    ax_fit.legend(fontsize=8)
    ax_fit.set_title("outcome frequencies: data and posterior predictive", fontsize=9)
    ax_cover.hist(randomized_pit(observed, draws), bins=20, range=(0, 1), color="0.6")
    ax_cover.set_xlabel("randomized PIT")
    ax_cover.set_title("calibration (randomized PIT): uniform when calibrated", fontsize=9)
    modes = classes[np.argmax([(draws == c).mean(0) for c in classes], axis=0)]
    return ("<h2>Predictions</h2>"
            + note_html(f"{observed.size} points with {classes.size} distinct outcomes; the "
                        "most probable outcome of each point's predictive distribution is "
                        f"right for {100 * float((modes == observed).mean()):.0f}% of them")
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
    steps = np.atleast_2d(np.asarray(stats["step_size"].values))  # [chain, draw]
    updates = (np.atleast_2d(np.asarray(stats["update"].values)) if "update" in stats
               else np.broadcast_to(np.arange(steps.shape[1]), steps.shape))
    fig = Figure(figsize=(10, 2.6))
    ax = fig.subplots()
    for chain, (update, step) in enumerate(zip(updates, steps)):
        ax.plot(update, step, ".", ms=2, label=f"chain {chain}")
    if steps.shape[0] > 1:
        ax.legend(fontsize=7, markerscale=4)
    ax.set_xlabel("update" if "update" in stats else "draw")
    ax.set_ylabel("step size")
    ax.set_title("step size of the update behind each draw, every chain", fontsize=9)
    attrs = idata.posterior.attrs if "posterior" in idata.groups() else {}
    temperature = stats.attrs.get("temperature", attrs.get("temperature"))
    notes = [f"temperature {format_number(temperature)}"] if temperature is not None else []
    last = steps[:, -1]
    if steps.shape[0] > 1 and not np.allclose(last, last[0]):
        notes.append("the chains sampled with different steps (each measured its own): last "
                     "step " + ", ".join(f"chain {c} {format_number(v)}"
                                         for c, v in enumerate(last)))
    return ("<h2>Step-size schedule</h2>" + note_html("; ".join(notes))
            + figure_html(fig, "step sizes"))
