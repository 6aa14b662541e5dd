"""Posterior predictive, pointwise log-likelihood and metrics of SG-MCMC draws, and their
conversion to ArviZ ``InferenceData``.

Predicted values come from ``pyro.infer.Predictive``; the pointwise log-likelihood and
the predictive means come from the model traced once per posterior draw on all rows
(``subsample=False``): a loop over draws after sampling, not in any hot path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import arviz as az
import numpy as np
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import Tensor

OBSERVED_SITE = "obs"


@torch.no_grad()
def pointwise_predictive(
    model: Callable,
    samples: dict[str, Tensor],
    X: Tensor,
    y: Tensor | None = None,
    *,
    site: str = OBSERVED_SITE,
) -> dict[str, Tensor]:
    """Per draw: predicted ``site`` values and, with ``y``, the pointwise log-likelihood.

    Args:
        model: the Pyro program, called as ``model(X, y, subsample=False)``.
        samples: constrained draws ``{name: [chains, draws, ...]}`` (as
            ``mcmc.get_samples(group_by_chain=True)``).
        X, y: the rows to predict (and score).

    Returns:
        ``{"prediction": [chains, draws, N], "mean": [chains, draws, N, ...],
        "log_likelihood": [chains, draws, N]}`` (the last with ``y`` only). ``mean`` is
        the predictive mean of a Gaussian likelihood or the class probabilities of a
        categorical one.
    """
    first = next(iter(samples.values()))
    chains, draws = first.shape[:2]
    flat = {k: v.reshape(chains * draws, *v.shape[2:]) for k, v in samples.items()}
    predicted = Predictive(model, posterior_samples=flat, return_sites=[site])(
        X, None, subsample=False
    )[site]
    means, log_liks = [], []
    for i in range(chains * draws):
        values = {k: v[i] for k, v in flat.items()}
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(
            X, None, subsample=False
        )
        fn = trace.nodes[site]["fn"]
        means.append(fn.probs if isinstance(fn, dist.Categorical) else fn.mean)
        if y is not None:
            log_liks.append(fn.log_prob(y))
    out = {
        "prediction": predicted.reshape(chains, draws, -1),
        "mean": torch.stack(means).reshape(chains, draws, *means[0].shape),
    }
    if y is not None:
        out["log_likelihood"] = torch.stack(log_liks).reshape(chains, draws, -1)
    return out


def log_predictive_density(log_likelihood: Tensor) -> Tensor:
    """``log (1/S) Σ_s p(y_n | θ_s)`` per row, from ``[chains, draws, N]``."""
    flat = log_likelihood.reshape(-1, log_likelihood.shape[-1])
    return torch.logsumexp(flat, 0) - math.log(flat.shape[0])


def regression_metrics(predictive: dict[str, Tensor], y: Tensor) -> dict[str, float]:
    """RMSE of the posterior predictive mean and the mean test log-likelihood."""
    mean = predictive["mean"].reshape(-1, y.shape[0]).mean(0)
    return {
        "rmse": float((mean - y).pow(2).mean().sqrt()),
        "log_likelihood": float(log_predictive_density(predictive["log_likelihood"]).mean()),
    }


def classification_metrics(predictive: dict[str, Tensor], y: Tensor,
                           num_bins: int = 10) -> dict[str, float]:
    """Accuracy, NLL and expected calibration error (Guo et al. 2017) of the
    posterior predictive class probabilities."""
    probs = predictive["mean"]
    probs = probs.reshape(-1, *probs.shape[2:]).mean(0)  # [N, classes]
    confidence, predicted = probs.max(-1)
    correct = (predicted == y.long()).float()
    edges = torch.linspace(0, 1, num_bins + 1, device=probs.device)
    bins = torch.bucketize(confidence, edges[1:-1])
    ece = probs.new_zeros(())
    for b in range(num_bins):
        members = bins == b
        if members.any():
            ece = ece + members.float().mean() * (correct[members].mean()
                                                  - confidence[members].mean()).abs()
    nll = -log_predictive_density(predictive["log_likelihood"]).mean()
    return {"accuracy": float(correct.mean()), "nll": float(nll), "ece": float(ece)}


def sgmcmc_inference_data(
    mcmc: Any,
    X: Tensor | None = None,
    y: Tensor | None = None,
    *,
    site: str = OBSERVED_SITE,
) -> az.InferenceData:
    """``InferenceData`` of a ``pyro.infer.MCMC`` run with a posterity SG-MCMC kernel.

    Groups: ``posterior`` (constrained draws), ``posterior_predictive`` and pointwise
    ``log_likelihood`` of ``X, y`` (default: the data the chains were run on), so that
    ``az.loo`` and ``az.waic`` work, ``observed_data``, and ``sample_stats`` with the
    step size of the update that produced each draw and the temperature.
    """
    kernel = mcmc.kernel
    if X is None:
        if not mcmc._args:
            raise ValueError("pass X (and y): the MCMC run kept no data")
        X, y = mcmc._args[0], mcmc._args[1] if len(mcmc._args) > 1 else None
    samples = mcmc.get_samples(group_by_chain=True)
    chains, draws = next(iter(samples.values())).shape[:2]
    predictive = pointwise_predictive(kernel.model, samples, X, y, site=site)

    def numpy(t: Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    posterior = {k: numpy(v) for k, v in samples.items()}
    steps = kernel.step_indices(draws)
    step_size = np.tile([kernel.schedule(t) for t in steps], (chains, 1))
    groups = {
        "posterior": posterior,
        "posterior_predictive": {site: numpy(predictive["prediction"])},
        "sample_stats": {"step_size": step_size,
                         "temperature": np.full((chains, draws), kernel.temperature),
                         "update": np.tile(steps, (chains, 1))},
    }
    dims = {site: ["data"]}
    if y is not None:
        groups["log_likelihood"] = {site: numpy(predictive["log_likelihood"])}
        groups["observed_data"] = {site: numpy(y)}
    idata = az.from_dict(**groups, dims=dims,
                         coords={"data": np.arange(X.shape[0])},
                         attrs={"kernel": type(kernel).__name__,
                                "schedule": repr(kernel.schedule),
                                "thin": kernel.thin, "temperature": kernel.temperature})
    return idata
