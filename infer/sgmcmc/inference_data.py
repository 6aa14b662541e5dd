"""ArviZ ``InferenceData`` of a ``pyro.infer.MCMC`` run with a posterity SG-MCMC kernel,
for any model signature.

Everything comes from what the kernel recorded in ``setup`` (the model and the
arguments ``MCMC.run`` passed it) and from the model itself:

* ``posterior``: the constrained draws ``[chain, draw, ...]``;
* ``sample_stats``: per draw, the index of the update that produced it, counted from
  the chain's first update with warm-up included, its step size, the temperature and
  ``diverging`` (always ``False``: a diverging chain raises instead);
* ``log_likelihood``, ``posterior_predictive`` and ``observed_data``, whenever the
  model has observed sites inside its subsampled data plate (any names). The model is
  traced with each draw's latent values and the plate's indices set to consecutive
  blocks of its subsample size until every data point is covered; each observed
  site's value gives the pointwise log-likelihood ``[chain, draw, N]`` (summed over
  the site's other dimensions) and a draw from its distribution the posterior
  predictive, with the data axis first.

The data are the model's own arguments from ``MCMC.run``, or new ones: positional
arguments replace the recorded ones and keyword arguments update them, so
``to_inference_data(mcmc, X_test, y_test)`` scores held-out data for a model called as
``model(X, y)`` and ``to_inference_data(mcmc, test_batch)`` for ``model(batch)``.
Shapes are checked, never broadcast: an observed value whose shape is not its
distribution's ``batch_shape + event_shape`` is a ``ValueError`` naming the site.

Chains across processes. Under a process group (:mod:`posterity.infer.distributed`)
each rank runs its own ``num_chains`` chains with its own random stream (see
:mod:`.kernels`), and :func:`sgmcmc_inference_data` gathers every rank's chains
(posterior, sample_stats, log_likelihood, posterior_predictive) with
:func:`~posterity.infer.inference_data.gather_chains`: the chain dimension spans all
ranks in rank order (rank 0's chains first, coordinates ``0 .. W·C - 1``) and every
rank gets the same ``InferenceData``. It is a collective: call it on every rank, with
the same data. ``mcmc.get_samples()`` stays local: this rank's chains only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import arviz as az
import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor

from ..inference_data import gather_chains
from .potential import data_sites


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _plate_layout(model: Callable, args: tuple, kwargs: dict, values: dict[str, Tensor],
                  plates: set[str]) -> dict[str, tuple[int, int, torch.device]]:
    """``{plate: (size, block, device)}`` of the data plates in a call of the model."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    layout = {}
    for name in plates:
        site = trace.nodes.get(name)
        if site is None or site["type"] != "sample":
            continue
        layout[name] = (int(site["fn"].size), len(site["value"]), site["value"].device)
    return layout


def _blocks(size: int, block: int, device: torch.device) -> list[tuple[Tensor, int]]:
    """Index blocks of length ``block`` covering ``range(size)``; the last one ends at
    ``size`` and overlaps its predecessor: ``(indices, number of new leading ones to
    skip)``."""
    out = []
    for start in range(0, size, block):
        first = min(start, size - block)
        out.append((torch.arange(first, first + block, device=device), start - first))
    return out


@torch.no_grad()
def observed_pointwise(
    model: Callable,
    samples: dict[str, Tensor],
    args: tuple,
    kwargs: dict,
    plates: set[str],
) -> dict[str, dict[str, Any]]:
    """Pointwise log-likelihood, posterior predictive and data of every observed site in
    the data ``plates``.

    Args:
        model: the Pyro program.
        samples: constrained draws ``{site: [chains, draws, ...]}``.
        args, kwargs: the model's arguments (the data to score).
        plates: names of the model's subsampled data plates.

    Returns:
        ``{site: {"plate": name, "log_likelihood": [C, D, N], "prediction":
        [C, D, N, ...], "observed": [N, ...]}}`` with the data axis first; empty when
        the model has no observed site in those plates.
    """
    first = {k: v[0, 0] for k, v in samples.items()}
    layout = _plate_layout(model, args, kwargs, first, plates)
    if not layout:
        return {}
    if len(layout) > 1:
        raise ValueError(f"the model has several subsampled data plates {sorted(layout)}; "
                         "the pointwise log-likelihood needs one")
    (plate, (size, block, device)), = layout.items()
    blocks = _blocks(size, block, device)
    chains, draws = next(iter(samples.values())).shape[:2]
    records: dict[str, dict[str, list]] = {}
    sites: dict[str, int] = {}
    for c in range(chains):
        for d in range(draws):
            values = {k: v[c, d] for k, v in samples.items()}
            parts: dict[str, dict[str, list]] = {}
            for indices, skip in blocks:
                conditioned = poutine.condition(model, data={**values, plate: indices})
                with poutine.block():
                    trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
                if not sites:
                    found = data_sites(trace, {plate})
                    sites = {n: axis for n, (_, axis) in found.items() if n not in samples}
                    if not sites:
                        return {}
                    records = {n: {"log_likelihood": [], "prediction": [], "observed": []}
                               for n in sites}
                for name, axis in sites.items():
                    site = trace.nodes[name]
                    fn, value = site["fn"], site["value"]
                    batch_axis = axis - len(fn.batch_shape)  # negative: the plate's dim
                    log_lik = fn.log_prob(value).movedim(batch_axis, 0)
                    part = parts.setdefault(name, {"log_likelihood": [], "prediction": [],
                                                   "observed": []})
                    part["log_likelihood"].append(log_lik.reshape(block, -1).sum(-1)[skip:])
                    part["prediction"].append(fn.sample().movedim(axis, 0)[skip:])
                    if c == 0 and d == 0:
                        part["observed"].append(value.movedim(axis, 0)[skip:])
            for name, part in parts.items():
                for key, pieces in part.items():
                    if pieces:
                        records[name][key].append(torch.cat(pieces))
    out = {}
    for name, record in records.items():
        log_lik = torch.stack(record["log_likelihood"])
        prediction = torch.stack(record["prediction"])
        out[name] = {
            "plate": plate,
            "log_likelihood": log_lik.reshape(chains, draws, size),
            "prediction": prediction.reshape(chains, draws, *prediction.shape[1:]),
            "observed": record["observed"][0],
        }
    return out


def sgmcmc_inference_data(mcmc: Any, *args: Any, **kwargs: Any) -> az.InferenceData:
    """``InferenceData`` of a finished ``pyro.infer.MCMC`` run with a posterity SG-MCMC
    kernel (see the module docstring for the groups).

    Args:
        mcmc: the run.
        *args: new positional arguments for the model (default: those of ``MCMC.run``),
            e.g. held-out ``X, y`` for the built-in models or a ``batch`` for
            ``model(batch)``.
        **kwargs: keyword arguments for the model, updating those of ``MCMC.run``.

    Example:
        >>> import pyro, torch
        >>> from pyro.infer import MCMC
        >>> from posterity.infer.sgmcmc import SGLD
        >>> from posterity.models import BayesianLogisticRegression
        >>> X, y = torch.randn(100, 2), torch.randint(0, 2, (100,)).float()
        >>> mcmc = MCMC(SGLD(BayesianLogisticRegression(2, subsample_size=25), 1e-3),
        ...             num_samples=10, warmup_steps=5, disable_progbar=True)
        >>> mcmc.run(X, y)
        >>> idata = sgmcmc_inference_data(mcmc, X[:30], y[:30])
        >>> idata.log_likelihood["obs"].shape
        (1, 10, 30)
        >>> int(idata.sample_stats["update"][0, 0])  # 5 warm-up updates came first
        5
    """
    kernel = mcmc.kernel
    if getattr(kernel, "potential", None) is None or getattr(mcmc, "_samples", None) is None:
        raise ValueError("mcmc has not run: call mcmc.run(...) before to_inference_data")
    model_args = tuple(args) if args else kernel.model_args
    model_kwargs = {**kernel.model_kwargs, **kwargs}
    validate = getattr(kernel.model, "validate_data", None)
    if callable(validate):
        validate(*model_args, **model_kwargs)
    samples = mcmc.get_samples(group_by_chain=True)
    chains, draws = next(iter(samples.values())).shape[:2]
    warmup = int(mcmc.warmup_steps)
    steps = kernel.step_indices(draws, warmup)
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {k: _numpy(v) for k, v in samples.items()},
        "sample_stats": {
            "update": np.tile(np.asarray(steps, dtype=np.int64), (chains, 1)),
            "step_size": _step_sizes(mcmc, steps, chains),
            "temperature": np.full((chains, draws), kernel.temperature),
            "diverging": np.zeros((chains, draws), dtype=bool),
        },
    }
    dims: dict[str, list[str]] = {}
    coords: dict[str, np.ndarray] = {}
    observed: dict[str, np.ndarray] = {}
    plates = set(kernel.potential.plates)
    pointwise = observed_pointwise(kernel.model, samples, model_args, model_kwargs, plates)
    if pointwise:
        for key in ("log_likelihood", "posterior_predictive"):
            groups[key] = {}
        for name, record in pointwise.items():
            dim = record["plate"] if record["plate"] not in samples else f"{record['plate']}_index"
            groups["log_likelihood"][name] = _numpy(record["log_likelihood"])
            groups["posterior_predictive"][name] = _numpy(record["prediction"])
            observed[name] = _numpy(record["observed"])
            dims[name] = [dim]
            coords[dim] = np.arange(record["log_likelihood"].shape[-1])
    elif plates:
        warnings.warn(
            f"no observed site was found inside the data plate(s) {sorted(plates)} of this "
            "call of the model: the InferenceData has no log_likelihood, "
            "posterior_predictive or observed_data", stacklevel=2)
    groups = gather_chains(groups)  # every rank's chains, rank 0's first
    if observed:
        groups["observed_data"] = observed
    idata = az.from_dict(**groups, dims=dims, coords=coords)
    run = {"kernel": type(kernel).__name__,
           "schedule": ("auto: each chain's own, in sample_stats.step_size"
                        if getattr(kernel, "auto_step", False) else repr(kernel.schedule)),
           "thin": kernel.thin, "temperature": kernel.temperature, "warmup_steps": warmup}
    # az.from_dict(attrs=) puts them on one group only; the report reads these two
    for group in ("posterior", "sample_stats"):
        if group in idata.groups():
            getattr(idata, group).attrs.update(run)
    return idata


def _step_sizes(mcmc: Any, steps: list[int], chains: int) -> np.ndarray:
    """``[chains, draws]``: the schedule's step at each draw's update, or with
    ``step_size="auto"`` each chain's own (from its diagnostics, which pyro's MCMC also
    brings back from chain worker processes)."""
    kernel = mcmc.kernel
    if getattr(kernel, "auto_step", False):
        per_chain = [d.get("step_size", math.nan) if d else math.nan
                     for d in getattr(mcmc, "_diagnostics", [None] * chains)]
        return np.repeat(np.asarray(per_chain, dtype=np.float64)[:, None], len(steps), 1)
    return np.tile([kernel.schedule(t) for t in steps], (chains, 1))


__all__ = ["observed_pointwise", "sgmcmc_inference_data"]
