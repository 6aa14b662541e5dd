"""Posterior predictive means and metrics of SG-MCMC draws for models called as
``model(X, y, subsample=False)`` (the built-in :mod:`posterity.models.bnn` signature).

Predicted values come from ``pyro.infer.Predictive``; the pointwise log-likelihood and
the predictive means come from the model traced once per posterior draw on all rows
(``subsample=False``): a loop over draws after sampling, not in any hot path. Any
model signature converts to ArviZ through :mod:`posterity.infer.sgmcmc.inference_data`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from torch import Tensor

from .inference_data import sgmcmc_inference_data

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

    For the built-in models and programs written like them; any other model is served by
    ``to_inference_data(mcmc, X_test, y_test)``, which needs none of this.

    Args:
        model: the Pyro program, called as ``model(X, y, subsample=False)``: it must
            take ``subsample`` and then use every row (``subsample_size=None``).
        samples: constrained draws ``{name: [chains, draws, ...]}`` (as
            ``mcmc.get_samples(group_by_chain=True)``).
        X, y: the rows to predict (and score).

    Returns:
        ``{"prediction": [chains, draws, N], "mean": [chains, draws, N, ...],
        "log_likelihood": [chains, draws, N]}`` (the last with ``y`` only). ``mean`` is
        the predictive mean of a Gaussian likelihood or the class probabilities of a
        categorical one.
    """
    validate = getattr(model, "validate_data", None)
    if callable(validate):
        validate(X, y)
    first = next(iter(samples.values()))
    chains, draws = first.shape[:2]
    flat = {k: v.reshape(chains * draws, *v.shape[2:]) for k, v in samples.items()}
    try:
        predicted = Predictive(model, posterior_samples=flat, return_sites=[site])(
            X, None, subsample=False
        )
    except TypeError as error:
        if "subsample" not in str(error):
            raise
        raise TypeError(
            f"pointwise_predictive calls model(X, y, subsample=False), which "
            f"{type(model).__name__} does not take ({error}); use "
            "to_inference_data(mcmc, X, y) for its predictive and pointwise "
            "log-likelihood, or give forward a subsample argument (subsample_size=None "
            "when it is False)") from None
    if site not in predicted:
        raise KeyError(f"the model has no sample site {site!r}; pass site= the name of its "
                       "observed site")
    predicted = predicted[site]
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
    posterior predictive class probabilities.

    ``predictive["mean"]``: ``[C, D, N, classes]`` class probabilities (a categorical
    model), or ``[C, D, N]``, the probability of class 1 (a Bernoulli model); ``y``:
    ``[N]`` labels.

    Example:
        >>> p = torch.tensor([[[0.9, 0.2, 0.6]]])  # [C=1, D=1, N=3]: P(y = 1)
        >>> predictive = {"mean": p, "log_likelihood": torch.zeros(1, 1, 3)}
        >>> metrics = classification_metrics(predictive, torch.tensor([1, 0, 0]))
        >>> round(metrics["accuracy"], 4)  # 0.9 -> 1 and 0.2 -> 0 right, 0.6 -> 1 wrong
        0.6667
    """
    probs = predictive["mean"]
    probs = probs.reshape(-1, *probs.shape[2:]).mean(0)  # [N, classes], or [N]: P(y = 1)
    if probs.shape == y.shape:
        probs = torch.stack([1 - probs, probs], -1)
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


__all__ = [
    "classification_metrics",
    "log_predictive_density",
    "pointwise_predictive",
    "regression_metrics",
    "sgmcmc_inference_data",  # moved to .inference_data; kept importable here
]
