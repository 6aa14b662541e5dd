"""Report section of wake-sleep: samples from the trained generative model.

Registered with :mod:`posterity.infer.report` when :mod:`posterity.infer.wake_sleep` is
imported. It reads the ``model_samples`` group (``x``, dims ``(sample, feature)``) that
:meth:`~posterity.infer.wake_sleep.WakeSleep.to_inference_data` writes: square images are shown
as a grid, other data as a heat map of samples by feature.

Example:
    >>> import arviz as az, numpy as np, xarray as xr
    >>> from posterity.infer.report import render
    >>> samples = xr.Dataset({"x": (("sample", "feature"), np.random.rand(16, 64))})
    >>> "Samples from the model" in render(az.InferenceData(model_samples=samples))
    True
"""

from __future__ import annotations

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from ..report import (
    ORDER_FIRST,
    figure_html,
    image_panels_html,
    note_html,
    register_section,
    square_side,
)


@register_section(groups=("model_samples",), order=ORDER_FIRST + 2)
def _model_samples(idata: az.InferenceData, count: int = 64) -> str | None:
    samples = np.asarray(idata.model_samples["x"].values)
    samples = samples.reshape(samples.shape[0], -1)[:count]
    if samples.size == 0:
        return None
    if square_side(samples.shape[1]):
        picture = image_panels_html([("samples from the model", samples)], columns=16, width=9,
                                    alt="model samples")
    else:
        fig = Figure(figsize=(10, 3))
        ax = fig.subplots()
        shown = ax.imshow(samples, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(shown, ax=ax)
        ax.set_xlabel("feature")
        ax.set_ylabel("sample")
        picture = figure_html(fig, "model samples")
    what = {
        "means": "the mean of p(x | z) at each draw of z (pixel probabilities for binary "
                 "data), from the model's sample()",
        "draws": "the observed site of each draw, as the model samples it",
    }.get(idata.model_samples.attrs.get("values"), "")
    return ("<h2>Samples from the model</h2>"
            + note_html(f"{samples.shape[0]} ancestral draws" + (f": {what}" if what else ""))
            + picture)
