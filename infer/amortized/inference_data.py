"""ArviZ groups of amortized inference (VI and wake-sleep): guide draws per data point,
importance weights and PSIS diagnostics.

* ``posterior``: guide draws of each latent site, dims ``(chain, draw, data, ...)``;
* ``sample_stats``: ``log_importance_weight`` ``(chain, draw, data)``;
* ``amortization``: per data point, the PSIS shape ``pareto_k`` (Vehtari et al. 2024;
  Yao et al. 2018 read ``k > 0.5`` as a poor and ``k > 0.7`` as a failed
  approximation; ``NaN`` where the largest weights are tied, see :func:`pareto_khat`),
  the importance-sampled ``log_likelihood``, the relative ESS, and the ``rate``
  ``E_q[log q(z|x) - log p(z)]`` (in closed form where every latent site has one) and
  ``distortion`` ``-E_q[log p(x|z)]`` (Alemi et al. 2018) estimated with the same
  draws (and, from a BiHM engine, ``log_likelihood_star``, ``log p̂*(x)`` of its
  model);
* ``observed_data``: the data points;
* ``posterior_predictive``: ``reconstructions``, the mean of the model's observation
  distribution given one guide draw per data point (pixel probabilities of a Bernoulli
  decoder), dims ``(chain, draw, data, x_dim_0)`` with one chain and one draw, when the
  model has a single observed site;
* ``model_samples`` (``num_model_samples > 0``): ``x`` ``(sample, feature)``, from
  ``model.sample(n)`` where the model has one (the built-in models: mean images of
  ancestral draws; attribute ``values="means"``), else the observed site of ``n``
  ancestral draws of the model (:func:`~posterity.infer.importance.ancestral_draws`),
  flattened per draw (``values="draws"``); none for a model with several observed
  sites;
* ``training_history``: every logged quantity, by ``epoch`` and by ``step``;
* ``rate_distortion`` (multi-rate runs): rate and distortion by ``beta``.
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
import xarray as xr
from torch import Tensor

from ..checks import check_int, prepare_pair
from ..importance import (
    ObservedSitesError,
    ancestral_draws,
    max_plate_nesting,
    sample_sites,
    weighted_particles,
)
from ..inference_data import history_dataset
from ..train import History
from .evaluate import RateDistortion

KHAT_GOOD, KHAT_BAD = 0.5, 0.7


def pareto_khat(log_weights: Tensor) -> np.ndarray:
    """PSIS ``k̂`` of each column of ``log_weights`` ``[S, N]`` (``arviz.psislw``), or
    ``NaN`` where no tail can be fitted: fewer than 5 of the ``S`` draws lie above the
    tail's cutoff. That happens when the largest weights are tied, as the repeated draws
    of a discrete guide are (their weights are bounded: there is no heavy tail to fit;
    judge those points by their relative ESS), or with ``S`` under 25. ArviZ reports
    ``inf`` there, which would read as a failed fit.

    Example:
        >>> tied = torch.tensor([0.0, -1.0, -2.0]).repeat(100)[:, None]  # 3 distinct weights
        >>> pareto_khat(tied)
        array([nan])
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small-S warnings from arviz
        _, khat = az.psislw(log_weights.T.double().cpu().numpy())
    khat = np.array(khat, dtype=float, ndmin=1)
    khat[np.isposinf(khat)] = np.nan
    return khat


def relative_ess(log_weights: Tensor) -> Tensor:
    """Importance-sampling ESS / S of each column: ``(Σw)^2 / (S Σw^2)``."""
    num = 2 * torch.logsumexp(log_weights, 0)
    den = torch.logsumexp(2 * log_weights, 0) + math.log(log_weights.shape[0])
    return torch.exp(num - den)


def rate_distortion_dataset(curve: RateDistortion) -> xr.Dataset:
    """A rate-distortion curve as a dataset over ``beta``: rate, distortion and the
    objective D + βR, nats per data point (:meth:`RateDistortion.to_dataset`)."""
    return curve.to_dataset()


def reconstructions(model: Callable, guide: Callable, x: Tensor) -> Tensor | None:
    """The mean of ``p(x | z)`` at one draw ``z ~ q(z | x)`` per row of ``x``, ``[N, D]``.

    Found by tracing the guide and replaying the model, so it works for any pair of
    programs; ``None`` when the model has not exactly one observed site or its
    distribution has no mean.
    """
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    observed = [s for s in sample_sites(model_trace).values() if s["is_observed"]]
    if len(observed) != 1:
        return None
    try:
        mean = observed[0]["fn"].mean
    except NotImplementedError:
        return None
    if mean.numel() != x.numel():
        return None
    return mean.reshape(x.shape[0], -1)


@torch.no_grad()
def model_samples(model: Callable, guide: Callable, x: Tensor, n: int) -> Tensor | None:
    """``[n, features]``: ``model.sample(n)``, or the observed site of ``n`` ancestral
    draws (shaped like one row of ``x``); ``None`` for a model with several observed
    sites, which has no single thing to show."""
    if callable(getattr(model, "sample", None)):
        return model.sample(n).reshape(n, -1)
    template = x[:1]
    with poutine.block():
        try:
            draws, observed = ancestral_draws(
                model, template, n, max_plate_nesting(model, guide, template))
        except ObservedSitesError:
            return None
    return draws[observed].reshape(n, -1)


@torch.no_grad()
def amortized_inference_data(
    model: Callable,
    guide: Callable,
    x: Tensor,
    num_samples: int = 200,
    *,
    num_chains: int = 1,
    history: History | None = None,
    attrs: dict[str, Any] | None = None,
    batch_size: int = 100,
    num_model_samples: int = 0,
) -> az.InferenceData:
    """Guide draws, importance weights and PSIS diagnostics for the rows of ``x``.

    Args:
        model, guide: the trained pair.
        x: the data points to describe, ``[N, D]``.
        num_samples: draws per data point (``S``); PSIS needs about 100 or more.
        num_chains: split the independent draws into this many chains, so that ArviZ's
            R-hat and ESS can be read (they should be about 1 and about ``S``).
        history: a training history to include.
        attrs: extra attributes (engine name, objective, ...).
        batch_size: data points per vectorized pass.
        num_model_samples: draws from the model for a ``model_samples`` group (0: none):
            ``model.sample(n)``, or ancestral draws of its observed site.

    Returns:
        ``InferenceData`` with the groups listed in this module's docstring.
    """
    check_int("num_samples", num_samples, 2)
    check_int("num_chains", num_chains, 1)
    if num_samples % num_chains:
        raise ValueError(
            f"num_samples ({num_samples}) must be a multiple of num_chains ({num_chains})"
        )
    x, nesting = prepare_pair(model, guide, x, "x")
    check_int("num_model_samples", num_model_samples, 0)
    latents: dict[str, list[Tensor]] = {}
    log_weights, rate, distortion = [], [], []
    for batch in x.split(batch_size):
        particles = weighted_particles(
            model, guide, (batch,), num_particles=num_samples, plate_nesting=nesting,
            analytic_kl=None,
        )
        log_weights.append(particles.log_weights)
        rate.append(particles.rate.mean(0))
        distortion.append(-particles.log_likelihood.mean(0))
        for name, value in particles.latents.items():
            latents.setdefault(name, []).append(value)
    log_weights = torch.cat(log_weights, dim=1)  # [S, N]

    def draws(t: Tensor) -> np.ndarray:
        """``[S, N, ...]`` -> ``[chains, S / chains, N, ...]``."""
        array = t.detach().cpu().numpy()
        return array.reshape(num_chains, num_samples // num_chains, *array.shape[1:])

    posterior = {}
    dims = {}
    for name, parts in latents.items():
        value = torch.cat(parts, dim=1)
        posterior[name] = draws(value)
        dims[name] = ["data"] + [f"{name}_dim_{i}" for i in range(value.dim() - 2)]
    coords = {"data": np.arange(x.shape[0])}
    log_lik = torch.logsumexp(log_weights, 0) - math.log(num_samples)
    groups = {
        "posterior": az.dict_to_dataset(posterior, library=None, coords=coords, dims=dims),
        "sample_stats": az.dict_to_dataset(
            {"log_importance_weight": draws(log_weights)},
            library=None, coords=coords, dims={"log_importance_weight": ["data"]},
        ),
        "observed_data": xr.Dataset(
            {"x": (("data", "x_dim_0"), x.reshape(x.shape[0], -1).cpu().numpy())},
            coords=coords,
        ),
        "amortization": xr.Dataset(
            {
                "pareto_k": ("data", pareto_khat(log_weights)),
                "log_likelihood": ("data", log_lik.cpu().numpy()),
                "relative_ess": ("data", relative_ess(log_weights).cpu().numpy()),
                "rate": ("data", torch.cat(rate).cpu().numpy()),
                "distortion": ("data", torch.cat(distortion).cpu().numpy()),
            },
            coords=coords,
            attrs={"num_samples": num_samples, "khat_good": KHAT_GOOD, "khat_bad": KHAT_BAD},
        ),
    }
    means = reconstructions(model, guide, x)
    if means is not None:
        groups["posterior_predictive"] = az.dict_to_dataset(
            {"reconstructions": means.cpu().numpy()[None, None]}, library=None,
            coords=coords, dims={"reconstructions": ["data", "x_dim_0"]},
        )
    samples = model_samples(model, guide, x, num_model_samples) if num_model_samples else None
    if samples is not None:
        groups["model_samples"] = xr.Dataset(
            {"x": (("sample", "feature"), samples.cpu().numpy())},
            coords={"sample": np.arange(num_model_samples)},
            attrs={"values": "means" if callable(getattr(model, "sample", None)) else "draws"},
        )
    if history is not None and (history.epochs or history.steps):
        groups["training_history"] = history_dataset(history)
    idata = az.InferenceData(**groups)
    for name, value in (attrs or {}).items():
        idata.posterior.attrs[name] = value
    return idata
