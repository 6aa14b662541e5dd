"""Evaluation of a trained model and guide: marginal likelihood and rate-distortion."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..checks import check_int, prepare_pair
from ..importance import WeightedParticles, weighted_particles

# Particles x rows x width kept in memory at once (~64 MB of float32).
_MAX_ELEMENTS = 2**24


def _data_width(x: Tensor) -> int:
    return int(np.prod(x.shape[1:])) if x.dim() > 1 else 1


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    x: Tensor,
    num_samples: int = 5000,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    return_stderr: bool = False,
    progress: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Importance-sampled ``log p(x)`` of each row of ``x`` (Burda et al. 2016).

    ``log p̂(x) = log (1/S) Σ_s p(x, z_s) / q(z_s | x)`` with ``z_s ~ q(z | x)``. The
    estimate is a stochastic lower bound whose expectation rises to ``log p(x)`` as
    ``S`` grows. Particles are drawn in chunks and combined with a running
    log-sum-exp, so memory stays bounded at any ``S``.

    Args:
        model, guide: Pyro programs with their data in ``pyro.plate("data")``.
        x: data, ``[N, D]``.
        num_samples: ``S`` importance samples per data point.
        batch_size: rows per pass.
        chunk_size: particles per pass; by default as many as fit ``2**24`` elements.
        return_stderr: also return the delta-method standard error of each estimate,
            ``sqrt(Var(w) / S) / mean(w)``, estimated from the same samples.
        progress: show a ``tqdm`` bar.

    Returns:
        ``[N]`` log-likelihoods in nats (and ``[N]`` standard errors).

    Example:
        >>> from posterity.models import LinearGaussianVAE
        >>> from posterity.guides import GaussianEncoder
        >>> model, guide = LinearGaussianVAE(5, 2), GaussianEncoder(5, 2, hidden=())
        >>> log_likelihood(model, guide, torch.randn(3, 5), 100, progress=False).shape
        torch.Size([3])
    """
    check_int("num_samples", num_samples, 1)
    check_int("batch_size", batch_size, 1)
    x, nesting = prepare_pair(model, guide, x, "x")
    if chunk_size is None:
        chunk_size = max(1, _MAX_ELEMENTS // (batch_size * _data_width(x)))
    check_int("chunk_size", chunk_size, 1)
    chunk_size = min(chunk_size, num_samples)

    estimates, stderrs = [], []
    batches = x.split(batch_size)
    for batch in tqdm(batches, disable=not progress, desc="log_likelihood", leave=False):
        sum_w, sum_w2 = [], []
        for start in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - start)
            log_weights = weighted_particles(
                model, guide, (batch,), num_particles=k, plate_nesting=nesting
            ).log_weights
            sum_w.append(torch.logsumexp(log_weights, 0))
            sum_w2.append(torch.logsumexp(2 * log_weights, 0))
        log_sum_w = torch.logsumexp(torch.stack(sum_w), 0)
        log_sum_w2 = torch.logsumexp(torch.stack(sum_w2), 0)
        estimates.append(log_sum_w - math.log(num_samples))
        # E[w^2] / E[w]^2 = S * sum w^2 / (sum w)^2
        relative_second_moment = torch.exp(log_sum_w2 - 2 * log_sum_w + math.log(num_samples))
        stderrs.append(((relative_second_moment - 1).clamp(min=0) / num_samples).sqrt())
    estimate = torch.cat(estimates)
    return (estimate, torch.cat(stderrs)) if return_stderr else estimate


@dataclass
class RateDistortion:
    """Rate ``E_q[log q(z|x) - log p(z)]`` and distortion ``-E_q[log p(x|z)]``, in nats
    per data point, at each ``beta`` (``None`` for a model without a β input)."""

    rate: Tensor
    distortion: Tensor
    beta: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        """``-(rate + distortion)``: the ELBO at each β."""
        return -(self.rate + self.distortion)

    def plot(self, ax: Any = None) -> Any:
        """Distortion against rate, one point per β (annotated), on a matplotlib axis."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 4))[1]
        rate, distortion = self.rate.cpu().numpy(), self.distortion.cpu().numpy()
        ax.plot(np.atleast_1d(rate), np.atleast_1d(distortion), "o-")
        if self.beta is not None:
            for r, d, b in zip(rate, distortion, self.beta.cpu().numpy()):
                ax.annotate(f"β={b:.3g}", (r, d), fontsize=7, alpha=0.7)
        ax.set_xlabel("rate (nats)")
        ax.set_ylabel("distortion (nats)")
        ax.set_title("rate-distortion")
        return ax


@torch.no_grad()
def rate_distortion(
    model: Callable,
    guide: Callable,
    x: Tensor,
    betas: Sequence[float] | Tensor | None = None,
    *,
    num_samples: int = 16,
    batch_size: int = 500,
) -> RateDistortion:
    """Monte Carlo rate and distortion of ``x`` under the guide (Alemi et al. 2018).

    Args:
        model, guide: the trained pair.
        x: data ``[N, D]``.
        betas: evaluate a multi-rate model and guide (whose programs take ``beta=``) at
            each β; ``None`` evaluates a plain pair once.
        num_samples: particles per data point for the Monte Carlo averages.
        batch_size: rows per pass.

    Returns:
        A :class:`RateDistortion` with ``[len(betas)]`` tensors (scalars without betas).
    """
    check_int("num_samples", num_samples, 1)
    x, nesting = prepare_pair(model, guide, x, "x")

    def measure(kwargs: dict) -> tuple[float, float]:
        rate = distortion = 0.0
        for batch in x.split(batch_size):
            batch_kwargs = {k: v(batch) if callable(v) else v for k, v in kwargs.items()}
            particles: WeightedParticles = weighted_particles(
                model, guide, (batch,), batch_kwargs, num_particles=num_samples,
                plate_nesting=nesting,
            )
            rate -= particles.log_density_ratio.mean(0).sum().item()
            distortion -= particles.log_likelihood.mean(0).sum().item()
        return rate / x.shape[0], distortion / x.shape[0]

    if betas is None:
        rate, distortion = measure({})
        return RateDistortion(torch.tensor(rate), torch.tensor(distortion))
    betas = torch.as_tensor(betas, dtype=x.dtype).flatten()
    points = [
        measure({"beta": lambda batch, b=float(b): batch.new_full((batch.shape[0],), b)})
        for b in betas
    ]
    rates, distortions = zip(*points)
    return RateDistortion(torch.tensor(rates), torch.tensor(distortions), betas)
