"""Evaluation of a trained model and guide: marginal likelihood and rate-distortion."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from posterity.layers.gated import DEFAULT_BETA_EXTENSION, multi_rate_settings

from ..checks import check_int, prepare_pair, user_stacklevel
from ..importance import WeightedParticles, weighted_particles
from ..progress import progress_bar

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
    progress: bool | None = None,
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
        progress: show a ``tqdm`` bar; ``None`` follows :mod:`posterity.infer.progress`.

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
    if return_stderr and num_samples < 2:
        raise ValueError("return_stderr=True needs num_samples >= 2 (one importance weight "
                         "says nothing about their spread), got 1")
    check_int("batch_size", batch_size, 1)
    x, nesting = prepare_pair(model, guide, x, "x")
    if chunk_size is None:
        chunk_size = max(1, _MAX_ELEMENTS // (batch_size * _data_width(x)))
    check_int("chunk_size", chunk_size, 1)
    chunk_size = min(chunk_size, num_samples)

    estimates, stderrs = [], []
    batches = x.split(batch_size)
    for batch in progress_bar(batches, progress=progress, desc="log_likelihood"):
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
    """Rate ``R = E_q[log q(z|x) - log p(z)]`` and distortion ``D = -E_q[log p(x|z)]``, in
    nats per data point, at each ``beta`` (``None`` for a model without a β input).

    Example:
        >>> curve = RateDistortion(torch.tensor([20.0, 5.0]), torch.tensor([90.0, 110.0]),
        ...                        torch.tensor([0.1, 2.0]))
        >>> curve.objective  # D + β R, what the β-VAE at each β minimizes
        tensor([ 92., 120.])
        >>> sorted(curve.to_dataset(prefix="reference_").data_vars)
        ['reference_distortion', 'reference_objective', 'reference_rate']
    """

    rate: Tensor
    distortion: Tensor
    beta: Tensor | None = None

    @property
    def elbo(self) -> Tensor:
        """``-(rate + distortion)``: the ELBO at each β."""
        return -(self.rate + self.distortion)

    @property
    def objective(self) -> Tensor:
        """``D + β R`` at each β (β = 1 without betas: minus the ELBO), nats per data
        point, lower is better: the β-VAE objective (Higgins et al. 2017) that the
        multi-rate model at β and a β-VAE trained at β both minimize."""
        beta = self.beta if self.beta is not None else 1.0
        return self.distortion + beta * self.rate

    def to_dataset(self, prefix: str = ""):
        """An ``xarray.Dataset`` of ``rate``, ``distortion`` and ``objective`` over the
        coordinate ``beta`` (each name prefixed by ``prefix``, coordinate included, so
        that a curve and its reference points merge into one group)."""
        import xarray as xr

        beta = self.beta if self.beta is not None else self.rate.new_ones(())
        dim = f"{prefix}beta"

        def values(t: Tensor) -> np.ndarray:
            return np.atleast_1d(t.detach().cpu().numpy())

        return xr.Dataset(
            {f"{prefix}{name}": (dim, values(getattr(self, name)))
             for name in ("rate", "distortion", "objective")},
            coords={dim: values(beta)},
        )

    def plot(self, ax: Any = None, reference: RateDistortion | None = None) -> Any:
        """Distortion against rate, one point per β (annotated), on a matplotlib axis;
        ``reference`` (e.g. separately trained β-VAEs, :func:`reference_points`) is
        drawn as separate markers."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(5, 4))[1]
        rate, distortion = self.rate.cpu().numpy(), self.distortion.cpu().numpy()
        ax.plot(np.atleast_1d(rate), np.atleast_1d(distortion), "o-", label="one model")
        if self.beta is not None:
            for r, d, b in zip(rate, distortion, self.beta.cpu().numpy()):
                ax.annotate(f"β={b:.3g}", (r, d), fontsize=7, alpha=0.7)
        if reference is not None:
            ax.plot(np.atleast_1d(reference.rate.cpu().numpy()),
                    np.atleast_1d(reference.distortion.cpu().numpy()), "s",
                    mfc="none", label="separate models (reference)")
            ax.legend(fontsize=8)
        ax.set_xlabel("rate (nats)")
        ax.set_ylabel("distortion (nats)")
        ax.set_title("rate-distortion")
        return ax


def _takes_beta(program: Callable) -> bool:
    function = program.forward if isinstance(program, torch.nn.Module) else program
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: cannot tell, let it try
        return True
    return any(p.name == "beta" or p.kind is p.VAR_KEYWORD for p in parameters)


def _check_multi_rate_pair(model: Callable, guide: Callable, betas: Tensor) -> None:
    """Refuse programs that take no ``beta=``; warn about β outside the range trained."""
    for role, program in (("model", model), ("guide", guide)):
        if not _takes_beta(program):
            raise ValueError(
                f"betas= evaluates a multi-rate pair, whose programs take beta=; the {role} "
                f"({type(program).__name__}) takes no beta argument: call rate_distortion "
                "without betas for a model trained at one β")
    for program in (model, guide):
        if not isinstance(program, torch.nn.Module):
            continue
        beta_range, extension = multi_rate_settings(program)
        if beta_range is None:
            continue
        extension = DEFAULT_BETA_EXTENSION if extension is None else extension
        low = beta_range[0] * 10.0 ** -extension
        outside = [f"{float(b):.4g}" for b in betas
                   if not low * (1 - 1e-6) <= float(b) <= beta_range[1] * (1 + 1e-6)]
        if outside:
            warnings.warn(
                f"betas {', '.join(outside)} lie outside the range the pair was trained on "
                f"[{low:g}, {beta_range[1]:g}] (beta_range {beta_range} and "
                f"{extension:g} decades below): the networks extrapolate there",
                UserWarning, stacklevel=user_stacklevel())
            return


def _check_betas(betas: Any, like: Tensor) -> Tensor:
    try:
        betas = torch.as_tensor(betas, dtype=like.dtype, device=like.device).flatten()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"betas must be a sequence of positive numbers or a tensor, got "
                        f"{type(betas).__name__}") from error
    if betas.numel() == 0:
        raise ValueError("betas is empty")
    if not (torch.isfinite(betas) & (betas > 0)).all():
        raise ValueError(f"betas must be finite and > 0, got {betas.tolist()}")
    return betas


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
    """Rate and distortion of ``x`` under the guide (Alemi et al. 2018): the rate
    ``KL(q(z | x) || p(z))`` in closed form where every latent site has one (see
    :func:`~posterity.infer.weighted_particles`), else from the draws, and
    the distortion ``-E_q[log p(x | z)]`` from the draws.

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
    check_int("batch_size", batch_size, 1)
    x, nesting = prepare_pair(model, guide, x, "x")

    def measure(kwargs: dict) -> tuple[float, float]:
        rate = distortion = 0.0
        for batch in x.split(batch_size):
            batch_kwargs = {k: v(batch) if callable(v) else v for k, v in kwargs.items()}
            particles: WeightedParticles = weighted_particles(
                model, guide, (batch,), batch_kwargs, num_particles=num_samples,
                plate_nesting=nesting, analytic_kl=None,
            )
            rate += particles.rate.mean(0).sum().item()
            distortion -= particles.log_likelihood.mean(0).sum().item()
        return rate / x.shape[0], distortion / x.shape[0]

    if betas is None:
        rate, distortion = measure({})
        return RateDistortion(x.new_tensor(rate), x.new_tensor(distortion))
    betas = _check_betas(betas, x)
    _check_multi_rate_pair(model, guide, betas)
    points = [
        measure({"beta": lambda batch, b=float(b): batch.new_full((batch.shape[0],), b)})
        for b in betas
    ]
    rates, distortions = zip(*points)
    return RateDistortion(x.new_tensor(rates), x.new_tensor(distortions), betas)


def reference_points(
    pairs: Mapping[float, tuple[Callable, Callable]],
    x: Tensor,
    *,
    num_samples: int = 16,
    batch_size: int = 500,
) -> RateDistortion:
    """Rate and distortion of separately trained models, one per β (e.g. β-VAEs).

    The reference points of a multi-rate curve: ``pairs[β] = (model, guide)`` trained
    with the β objective at that β, each evaluated on ``x`` as by
    :func:`rate_distortion`. Compare ``curve.objective`` with ``reference.objective``
    at the same β, plot with ``curve.plot(reference=reference)``, or store
    ``reference.to_dataset(prefix="reference_")`` beside ``curve.to_dataset()``.

    Returns:
        A :class:`RateDistortion` with ``beta`` the sorted keys of ``pairs``.

    Example:
        >>> from posterity.models import VAE
        >>> from posterity.guides import GaussianEncoder
        >>> x = torch.bernoulli(torch.full((20, 6), 0.5))
        >>> pairs = {b: (VAE(6, 2, (4,)), GaussianEncoder(6, 2, (4,))) for b in (0.5, 2.0)}
        >>> reference_points(pairs, x).beta
        tensor([0.5000, 2.0000])
    """
    if not isinstance(pairs, Mapping) or not pairs:
        raise TypeError("pairs must be a non-empty mapping {beta: (model, guide)}, got "
                        f"{type(pairs).__name__}")
    for beta, pair in pairs.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"pairs[{beta!r}] must be a (model, guide) tuple, got "
                            f"{type(pair).__name__}")
    betas = sorted(pairs)
    checked = _check_betas(betas, x if isinstance(x, Tensor) else torch.zeros(()))
    points = [rate_distortion(*pairs[b], x, num_samples=num_samples, batch_size=batch_size)
              for b in betas]
    return RateDistortion(torch.stack([p.rate for p in points]),
                          torch.stack([p.distortion for p in points]),
                          checked.to(points[0].rate))
