"""``to_inference_data``: every engine's result as ArviZ ``InferenceData``, with group
names from one vocabulary, :data:`GROUPS`.

Results convert themselves: each ``run``/``fit`` result has a ``to_inference_data()``
method, and :func:`to_inference_data` calls it. The report sections
(:mod:`posterity.infer.report` and each family's ``sections`` module) declare the
groups they read from the same vocabulary. Under a process group, samplers whose chains
run on every rank build their groups with :func:`gather_chains`, so one
``InferenceData`` holds the chains of every rank.

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

import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import xarray as xr

from . import distributed

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
      it recorded; any other kernel goes to ``arviz.from_pyro``, whose chains are then
      gathered over the process group by :func:`gather_inference_data` (seed each rank
      apart yourself for those kernels: ``pyro.set_rng_seed(distributed.rank_seed(s))``).

    Under a process group the samplers' conversions gather every rank's chains: call
    it on every rank.

    Raises:
        TypeError: when ``source`` is none of these.
    """
    from pyro.infer import MCMC

    if isinstance(source, MCMC):
        convert = getattr(source.kernel, "to_inference_data", None)
        if callable(convert):
            return convert(source, *args, **kwargs)
        return gather_inference_data(az.from_pyro(source, *args, **kwargs))
    method = getattr(source, "to_inference_data", None)
    if callable(method):
        return method(*args, **kwargs)
    raise TypeError(
        "to_inference_data needs a posterity engine or result (an object with a "
        f"to_inference_data method) or a pyro.infer.MCMC run, got {type(source).__name__}"
    )


def gather_chains(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """Every rank's chains in one set of arrays: chains across a process group.

    Samplers run their own chains on every rank (:mod:`posterity.infer.distributed`) and
    call this on every rank when they build their ``InferenceData``: each array's leading
    chain axis becomes the concatenation of every rank's chains in rank order (rank 0's
    first), so the result is the same on every rank and its chains are numbered
    ``0 .. (total chains - 1)``. Values may be nested mappings (one per ArviZ group);
    arrays are NumPy arrays or tensors (returned as NumPy). One collective for the whole
    mapping; outside a process group the arrays come back unchanged.

    Args:
        arrays: ``{name: [chains, ...]}`` or ``{group: {name: [chains, ...]}}``; the ranks
            may hold different numbers of chains, the other axes must agree.

    Raises:
        ValueError: the ranks disagree on the names or on an array's trailing shape.

    Example:
        >>> import numpy as np
        >>> out = gather_chains({"posterior": {"mu": np.zeros((2, 50))}})  # one process
        >>> out["posterior"]["mu"].shape
        (2, 50)
    """
    local = _as_numpy(arrays)
    if not distributed.is_initialized():
        return local
    return _concatenate(distributed.all_gather_objects(local), "")


def gather_inference_data(idata: az.InferenceData) -> az.InferenceData:
    """``idata`` with every rank's chains: each group with a ``chain`` dimension gets the
    chains of every rank in rank order (:func:`gather_chains`), renumbered ``0 ..``;
    groups without one (``observed_data``, ``constant_data``) are this rank's. For
    results built elsewhere (``arviz.from_pyro``); posterity's samplers gather their
    arrays before they build their ``InferenceData``. A collective: call it on every
    rank. Outside a process group ``idata`` comes back as it is.

    Warns when two gathered chains are identical: the ranks drew the same random
    numbers (seed them apart, ``pyro.set_rng_seed(distributed.rank_seed(seed))``).
    """
    if not distributed.is_initialized():
        return idata
    chained = {group: {name: v.values for name, v in idata[group].data_vars.items()
                       if v.dims[:1] == ("chain",)}
               for group in idata.groups() if "chain" in idata[group].dims}
    gathered = gather_chains(chained)
    groups = {}
    for group in idata.groups():
        dataset = idata[group]
        if group in gathered:
            arrays = gathered[group]
            coords = {c: dataset.coords[c] for c in dataset.coords
                      if "chain" not in dataset.coords[c].dims}
            coords["chain"] = np.arange(next(iter(arrays.values())).shape[0])
            dataset = xr.Dataset({n: (dataset[n].dims, a) for n, a in arrays.items()},
                                 coords=coords, attrs=dataset.attrs)
        groups[group] = dataset
    posterior = gathered.get("posterior", {})
    if posterior:
        flat = np.concatenate([a.reshape(a.shape[0], -1) for a in posterior.values()], 1)
        same = [(i, j) for i in range(len(flat)) for j in range(i)
                if np.array_equal(flat[i], flat[j])]
        if same:
            warnings.warn(
                f"chains {same[0][1]} and {same[0][0]} of the gathered posterior are identical: "
                "the ranks drew the same random numbers. Seed each rank apart, "
                "pyro.set_rng_seed(distributed.rank_seed(seed)) (posterity's samplers do it "
                "themselves)", stacklevel=2)
    return az.InferenceData(**groups)


def _as_numpy(arrays: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in arrays.items():
        if isinstance(value, Mapping):
            out[name] = _as_numpy(value)
        elif hasattr(value, "detach"):
            out[name] = value.detach().cpu().numpy()
        else:
            out[name] = np.asarray(value)
    return out


def _concatenate(per_rank: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    first = per_rank[0]
    for r, other in enumerate(per_rank[1:], 1):
        if other.keys() != first.keys():
            raise ValueError(f"gather_chains: rank {r} holds {prefix}{sorted(other)} but rank 0 "
                             f"holds {prefix}{sorted(first)}; every rank must record the same "
                             "variables")
    out = {}
    for name, value in first.items():
        if isinstance(value, Mapping):
            out[name] = _concatenate([p[name] for p in per_rank], f"{prefix}{name}.")
            continue
        shapes = [("chains",) + p[name].shape[1:] for p in per_rank]
        for r, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise ValueError(
                    f"gather_chains: {prefix}{name} has shape {list(shape)} on rank {r} but "
                    f"{list(shapes[0])} on rank 0; every rank must draw the same number of "
                    "samples of the same shape")
        out[name] = np.concatenate([p[name] for p in per_rank], axis=0)
    return out


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
