"""``to_inference_data``: every engine's result as ArviZ ``InferenceData``, with group
names from one vocabulary.

Groups (each family writes the ones it has):

* ``posterior``: draws, dims ``(chain, draw, ...)`` (amortized engines add ``data``);
* ``sample_stats``: per-draw statistics (log importance weights, step sizes, ...);
* ``log_likelihood``, ``posterior_predictive``, ``observed_data``;
* ``training_history``: every logged quantity of a gradient-trained run, by ``epoch``
  and by ``step``;
* ``filtering`` and ``smoothing``: particle filter and smoother summaries over ``time``;
* family groups: ``amortization`` (PSIS k̂ per data point), ``rate_distortion``
  (multi-rate runs), ``model_samples`` (wake-sleep).
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import xarray as xr

from .train import History

GROUPS = (
    "posterior",
    "sample_stats",
    "log_likelihood",
    "posterior_predictive",
    "observed_data",
    "training_history",
    "filtering",
    "smoothing",
    "amortization",
    "rate_distortion",
    "model_samples",
)


def to_inference_data(source: Any, *args: Any, **kwargs: Any) -> az.InferenceData:
    """ArviZ ``InferenceData`` for any posterity engine or result.

    Every engine and result object has a ``to_inference_data(...)`` method; this
    function calls it, so ``to_inference_data(vi, test[:100])`` works for an
    :class:`~posterity.infer.AmortizedVI` as for later engines. A ``pyro.infer.MCMC``
    run with a posterity SG-MCMC kernel gets the posterior predictive, the pointwise
    log-likelihood and the step sizes
    (:func:`~posterity.infer.sgmcmc.predictive.sgmcmc_inference_data`).
    """
    from pyro.infer import MCMC

    if isinstance(source, MCMC):
        from .sgmcmc.kernels import SGMCMCKernel
        from .sgmcmc.predictive import sgmcmc_inference_data

        if isinstance(source.kernel, SGMCMCKernel):
            return sgmcmc_inference_data(source, *args, **kwargs)
        return az.from_pyro(source, *args, **kwargs)
    method = getattr(source, "to_inference_data", None)
    if not callable(method):
        raise TypeError(
            f"to_inference_data needs a posterity engine or result, got {type(source).__name__}"
        )
    return method(*args, **kwargs)


def history_dataset(history: History) -> xr.Dataset:
    """A history as an ``xarray.Dataset`` with ``epoch`` and ``step`` dimensions."""
    variables = {}
    for name, values in history.epochs.items():
        if name != "epoch":
            variables[name] = ("epoch", np.asarray(values, dtype=float))
    for name, values in history.steps.items():
        variables[f"step_{name}"] = ("step", np.asarray(values, dtype=float))
    coords = {}
    if history.epochs.get("epoch"):
        coords["epoch"] = np.asarray(history.epochs["epoch"], dtype=int)
    if history.steps:
        coords["step"] = np.arange(1, len(next(iter(history.steps.values()))) + 1)
    attrs = {"stopped_early": int(history.stopped_early)}
    if history.best_epoch is not None:
        attrs["best_epoch"] = history.best_epoch
    return xr.Dataset(variables, coords=coords, attrs=attrs)


