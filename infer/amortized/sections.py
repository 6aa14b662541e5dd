"""Report sections of amortized inference: key figures, data against reconstructions,
the rate-distortion curve and the PSIS k̂ of every data point.

Registered with :mod:`posterity.infer.report` when :mod:`posterity.infer.amortized` is
imported; they read the groups written by
:mod:`posterity.infer.amortized.inference_data`.

Example:
    >>> import arviz as az, numpy as np, xarray as xr
    >>> from posterity.infer.report import render
    >>> k = np.array([0.1, 0.3, 0.6, 0.9])
    >>> idata = az.InferenceData(amortization=xr.Dataset(
    ...     {name: ("data", v) for name, v in [("pareto_k", k), ("log_likelihood", -k),
    ...                                         ("rate", k), ("distortion", k)]}))
    >>> "2 / 1 / 1" in render(idata)  # good / ok / bad data points
    True
"""

from __future__ import annotations

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from ..report import (
    ORDER_DIAGNOSTICS,
    ORDER_FIRST,
    ORDER_KEY,
    KeyFigure,
    collapsed,
    figure_html,
    format_number,
    image_panels_html,
    mean_estimate,
    note_html,
    register_key_figures,
    register_section,
    rows_html,
    square_side,
)
from .inference_data import KHAT_BAD, KHAT_GOOD


def _thresholds(group) -> tuple[float, float]:
    return (float(group.attrs.get("khat_good", KHAT_GOOD)),
            float(group.attrs.get("khat_bad", KHAT_BAD)))


@register_key_figures(groups=("amortization",), order=ORDER_KEY + 1)
def _key_figures(idata: az.InferenceData) -> list[KeyFigure]:
    group = idata.amortization
    attrs = idata.posterior.attrs if "posterior" in idata.groups() else {}
    n = group.sizes["data"]
    draws = group.attrs.get("num_samples")
    where = f"mean over {n} diagnostic points" + (f", S = {draws}" if draws else "")
    figures = []
    if "log_likelihood_star" in group:  # BiHM: its model is p*, the top-down p beside it
        figures.append(KeyFigure("log p*(x)", mean_estimate(group["log_likelihood_star"].values),
                                 f"nats, BiHM's model (2 log mean √w - log Ẑ); {where}"))
    if "test_log_likelihood" not in attrs:
        label = "log p(x) of the top-down model" if "log_likelihood_star" in group else "log p(x)"
        figures.append(KeyFigure(label, mean_estimate(group["log_likelihood"].values),
                                 f"nats, importance-sampled; {where}"))
    for name in ("rate", "distortion"):
        if name in group and name not in attrs:
            figures.append(KeyFigure(name, mean_estimate(group[name].values), f"nats; {where}"))
    khat = np.asarray(group["pareto_k"].values)
    good, bad = _thresholds(group)
    counts = [int((khat <= good).sum()), int(((khat > good) & (khat <= bad)).sum()),
              int((khat > bad).sum())]
    label, note = "PSIS k̂ good / ok / bad", ""
    tied = int(np.isnan(khat).sum())
    if tied:
        counts.append(tied)
        label += " / tied"
        note = ("; tied: no tail to fit, the largest weights repeat (a discrete guide's "
                "draws) or S < 25, judged by their relative ESS")
    figures.append(KeyFigure(
        label, " / ".join(map(str, counts)),
        f"data points with k̂ ≤ {good:g}, ≤ {bad:g}, > {bad:g} of {khat.size}: "
        f"where the guide fails (Yao et al. 2018){note}"))
    return figures


def _images(idata: az.InferenceData, group: str, name: str) -> np.ndarray | None:
    """``idata[group][name]`` as flat square images ``[n, side²]``, or ``None``."""
    if group not in idata.groups() or name not in getattr(idata, group):
        return None
    values = np.asarray(getattr(idata, group)[name].values)
    values = values.reshape(-1, values.shape[-1])
    return values if square_side(values.shape[-1]) else None


@register_section(groups=("observed_data", "posterior_predictive"), order=ORDER_FIRST)
def _reconstructions(idata: az.InferenceData, count: int = 40) -> str | None:
    data = _images(idata, "observed_data", "x")
    means = _images(idata, "posterior_predictive", "reconstructions")
    if data is None or means is None:
        return _reconstructions_as_rows(idata, count)
    count = min(count, data.shape[0])
    return ("<h2>Data and reconstructions</h2>"
            + note_html(f"the first {count} diagnostic points and the mean of p(x | z) at one "
                        "draw z ~ q(z | x) each")
            + image_panels_html([("data", data[:count]), ("reconstructions", means[:count])],
                                columns=8, alt="data and reconstructions"))


def _reconstructions_as_rows(idata: az.InferenceData, count: int) -> str | None:
    """Data that are not square images: data and reconstructions as heat maps, one row
    per data point."""
    if "x" not in getattr(idata, "observed_data", {}) or \
            "reconstructions" not in getattr(idata, "posterior_predictive", {}):
        return None
    data = np.asarray(idata.observed_data["x"].values, dtype=float)
    means = np.asarray(idata.posterior_predictive["reconstructions"].values, dtype=float)
    data = data.reshape(data.shape[0], -1)[:count]
    means = means.reshape(-1, data.shape[1])[: data.shape[0]]
    fig = Figure(figsize=(10, 3))
    low, high = min(data.min(), means.min()), max(data.max(), means.max())
    for ax, values, title in zip(fig.subplots(1, 2), (data, means), ("data", "reconstructions")):
        shown = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest",
                          vmin=low, vmax=high)
        ax.set_xlabel("feature")
        ax.set_ylabel("data point")
        ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=ax)
    return ("<h2>Data and reconstructions</h2>"
            + note_html(f"the first {data.shape[0]} diagnostic points (rows) and the mean of "
                        "p(x | z) at one draw z ~ q(z | x) each, on one colour scale")
            + figure_html(fig, "data and reconstructions"))


@register_section(groups=("rate_distortion",), order=ORDER_FIRST + 1)
def _rate_distortion(idata: az.InferenceData) -> str | None:
    curve = idata.rate_distortion
    beta = np.asarray(curve["beta"].values)
    rate, distortion = np.asarray(curve["rate"].values), np.asarray(curve["distortion"].values)
    fig = Figure(figsize=(10, 3.6))
    ax_rd, ax_beta = fig.subplots(1, 2)
    points = ax_rd.scatter(rate, distortion, c=np.log10(beta), cmap="viridis", s=18)
    ax_rd.plot(rate, distortion, lw=0.8, color="0.5")
    if "reference_rate" in curve:  # separately trained β-VAEs (reference_points)
        ax_rd.scatter(curve["reference_rate"].values, curve["reference_distortion"].values,
                      marker="x", color="C3", s=30, label="β-VAEs trained apart")
        ax_rd.legend(fontsize=7)
    fig.colorbar(points, ax=ax_rd, label="log10 β")
    ax_rd.set_xlabel("rate (nats)")
    ax_rd.set_ylabel("distortion (nats)")
    ax_rd.set_title("rate-distortion curve (Alemi et al. 2018)", fontsize=9)
    ax_beta.semilogx(beta, rate, "o-", label="rate", ms=3)
    ax_beta.semilogx(beta, distortion, "o-", label="distortion", ms=3)
    ax_beta.semilogx(beta, rate + distortion, "--", label="rate + distortion (-ELBO)", lw=1)
    ax_beta.set_xlabel("β")
    ax_beta.set_ylabel("nats")
    ax_beta.legend(fontsize=7)
    best = int(np.argmin(rate + distortion))
    objective = (np.asarray(curve["objective"].values) if "objective" in curve
                 else distortion + beta * rate)
    table = rows_html(zip(beta, rate, distortion, rate + distortion, objective),
                      ("β", "rate", "distortion", "rate + distortion", "D + βR"))
    return ("<h2>Rate-distortion curve</h2>"
            + note_html(f"lowest -ELBO at β = {format_number(beta[best])}: rate "
                        f"{format_number(rate[best])}, distortion "
                        f"{format_number(distortion[best])} nats")
            + figure_html(fig, "rate-distortion")
            + collapsed(f"table of the {beta.size} points", table))


@register_section(groups=("amortization",), order=ORDER_DIAGNOSTICS)
def _amortization(idata: az.InferenceData, worst: int = 8) -> str | None:
    group = idata.amortization
    khat = np.asarray(group["pareto_k"].values)
    ll = np.asarray(group["log_likelihood"].values)
    good, bad = _thresholds(group)
    colors = np.where(khat > bad, "C3", np.where(khat > good, "C1", "C0"))
    fig = Figure(figsize=(11, 3.2))
    ax_map, ax_hist, ax_ll = fig.subplots(1, 3)
    ax_map.scatter(np.arange(khat.size), khat, s=8, c=colors)
    ax_map.set_xlabel("data point")
    ax_map.set_ylabel("PSIS k̂")
    ax_map.set_title("k̂ of every data point", fontsize=9)
    finite = khat[np.isfinite(khat)]  # NaN: tied weights, no tail to fit (pareto_khat)
    if finite.size:
        ax_hist.hist(finite, bins=min(30, max(5, finite.size // 4)), color="0.6")
    ax_hist.set_xlabel("PSIS k̂")
    ax_hist.set_title("distribution of k̂", fontsize=9)
    for ax in (ax_map, ax_hist):
        for level, style in ((good, ":"), (bad, "--")):
            (ax.axhline if ax is ax_map else ax.axvline)(level, color="C3", linestyle=style,
                                                         linewidth=1)
    ax_ll.scatter(ll, khat, s=8, c=colors)
    ax_ll.set_xlabel("importance-sampled log p(x) (nats)")
    ax_ll.set_ylabel("PSIS k̂")
    ax_ll.set_title("k̂ against log p(x)", fontsize=9)
    parts = [
        "<h2>Amortization: PSIS k̂ per data point</h2>",
        note_html(f"S = {group.attrs.get('num_samples', '?')} guide draws per data point. "
                  f"k̂ ≤ {good:g}: importance sampling with the guide is reliable; "
                  f"k̂ > {bad:g}: the guide misses mass of the posterior (Yao et al. 2018)."
                  + (f" {int(np.isnan(khat).sum())} data points have no k̂ and are not drawn:"
                     " their largest weights are tied (a discrete guide's repeated draws, "
                     "whose weights are bounded) or S < 25; their relative ESS judges them."
                     if np.isnan(khat).any() else "")),
        figure_html(fig, "k-hat"),
    ]
    data = _images(idata, "observed_data", "x")
    if data is not None and data.shape[0] == khat.size:
        order = np.argsort(-khat)[:worst]
        panels = [("highest k̂: data", data[order])]
        means = _images(idata, "posterior_predictive", "reconstructions")
        if means is not None:
            panels.append(("their reconstructions", means[order]))
        labels = ", ".join(f"{format_number(k, 2)}" for k in khat[order])
        parts.append(note_html(f"the {order.size} data points with the highest k̂ ({labels})"))
        parts.append(image_panels_html(panels, columns=4, alt="worst k-hat"))
    if "relative_ess" in group:
        rows = [(i, khat[i], ll[i], group["relative_ess"].values[i])
                for i in np.argsort(-khat)[:20]]
        parts.append(collapsed(
            "the 20 data points with the highest k̂",
            rows_html(rows, ("data point", "k̂", "log p(x)", "relative ESS"))))
    return "".join(parts)
