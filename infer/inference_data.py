"""``to_inference_data``: every engine's result as ArviZ ``InferenceData``, with group
names from one vocabulary, :data:`GROUPS`.

Results convert themselves: each ``run``/``fit`` result has a ``to_inference_data()``
method, and :func:`to_inference_data` calls it. The report sections
(:mod:`posterity.infer.report` and each family's ``sections`` module) declare the
groups they read from the same vocabulary.

Example:
    >>> from posterity.infer.train import History
    >>> history = History()
    >>> history.log_epoch({"epoch": 1, "valid_elbo": -90.5})
    >>> history.log_step({"loss": 91.0})
    >>> idata = history_inference_data(history)  # what History.to_inference_data() gives
    >>> idata.training_history["valid_elbo"].dims, "training_history" in GROUPS
    (('epoch',), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import xarray as xr

if TYPE_CHECKING:
    from .train import History

GROUPS: Mapping[str, str] = MappingProxyType({
    # ArviZ's own groups
    "posterior": "draws, dims (chain, draw, ...); amortized engines add a data dim",
    "sample_stats": "per-draw statistics: log importance weights, step sizes, ...",
    "log_likelihood": "pointwise log-likelihood per draw, for az.loo and az.waic",
    "posterior_predictive": "predictions per draw; amortized engines: reconstructions "
                            "(the decoder mean of one guide draw per data point)",
    "observed_data": "the data the draws describe",
    "constant_data": "fixed inputs of a run (a reference path, covariates)",
    # posterity's groups shared by several families
    "training_history": "every quantity logged by a gradient-trained run, by epoch and by "
                        "step (VI, wake-sleep, score ascent)",
    "filtering": "particle-filter summaries over time: moments, ESS, resampling",
    "smoothing": "smoother estimates of additive functionals",
    # family groups
    "amortization": "amortized engines: PSIS k-hat, log-likelihood, rate and distortion "
                    "per data point",
    "rate_distortion": "multi-rate VAEs: rate and distortion by beta",
    "model_samples": "samples from the trained generative model",
})
"""The one vocabulary of group names: name -> what the group holds. Engines write only
these groups, and report sections read only these."""


def to_inference_data(source: Any, *args: Any, **kwargs: Any) -> az.InferenceData:
    """ArviZ ``InferenceData`` for any posterity engine, result or ``pyro.infer.MCMC`` run.

    * An object with a ``to_inference_data`` method (every posterity result, and the
      amortized engines, which take the data points to describe:
      ``to_inference_data(vi, test[:100])``) is asked to convert itself with ``*args``
      and ``**kwargs``.
    * A ``pyro.infer.MCMC`` run whose kernel has a ``to_inference_data(mcmc, ...)``
      method (posterity's SG-MCMC kernels) is converted by its kernel, which knows what
      it recorded; any other kernel goes to ``arviz.from_pyro``.

    Raises:
        TypeError: when ``source`` is none of these.
    """
    from pyro.infer import MCMC

    if isinstance(source, MCMC):
        convert = getattr(source.kernel, "to_inference_data", None)
        if callable(convert):
            return convert(source, *args, **kwargs)
        return az.from_pyro(source, *args, **kwargs)
    method = getattr(source, "to_inference_data", None)
    if callable(method):
        return method(*args, **kwargs)
    raise TypeError(
        "to_inference_data needs a posterity engine or result (an object with a "
        f"to_inference_data method) or a pyro.infer.MCMC run, got {type(source).__name__}"
    )


def history_dataset(history: History) -> xr.Dataset:
    """A training history as the ``training_history`` dataset.

    Per-epoch quantities get dim ``epoch`` (coordinate: the epoch numbers), per-update
    quantities get dim ``step`` (coordinate ``1..num_steps``) and the prefix ``step_``.
    Attributes: ``stopped_early`` (0/1), ``out_of_time`` (0/1) and ``best_epoch`` when
    early stopping chose one.
    """
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
    attrs = {"stopped_early": int(history.stopped_early),
             "out_of_time": int(getattr(history, "out_of_time", False))}
    if history.best_epoch is not None:
        attrs["best_epoch"] = history.best_epoch
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def history_inference_data(history: History) -> az.InferenceData:
    """``InferenceData`` with one group, ``training_history`` (:func:`history_dataset`):
    what ``History.to_inference_data()`` returns."""
    return az.InferenceData(training_history=history_dataset(history))
