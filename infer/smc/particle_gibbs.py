"""Conditional SMC and particle Gibbs with backward sampling, batched over chains.

Conditional SMC (Andrieu, Doucet & Holenstein 2010) runs a bootstrap filter in which the
last particle is pinned to a reference path at every step; the others resample
multinomially at every step. Drawing a new path from that particle system by backward
sampling (Whiteley 2010; Lindsten & Schön 2013) gives a Markov kernel on paths that
leaves the smoothing distribution invariant: particle Gibbs.

The ``C`` chains of :class:`ParticleGibbs` run as one particle system of shape
``[C, N, d]``: the model sees states with two batch dimensions (the protocol's
``[..., state_dim]``), resampling and backward sampling are vectorized over chains, and
each chain's law is that of a chain run alone.

Under a process group (:mod:`posterity.infer.distributed`) every rank runs its own
``num_chains`` chains, so ``W`` ranks run ``W · num_chains`` chains: chains are
independent, so there is no global law to preserve and nothing to split (a global count
would also have to be divisible by ``W``); each rank's chains follow a random stream of
their own (:func:`~posterity.infer.distributed.separate_stream`), and
``to_inference_data()``, called on every rank, gathers all of them into one
``InferenceData`` (rank 0's chains first), so R-hat compares chains from different
processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from .. import distributed
from ..checks import check_int
from ..inference_data import gather_chains
from ..progress import progress_bar
from .backward import backward_sampler
from .filter import FilterStep, WeightMonitor
from .protocol import validate_model


def _multinomial(log_weights: Tensor, num: int) -> Tensor:
    """``num`` draws per system from weights ``[*B, N]``: indices ``[*B, num]``."""
    N = log_weights.shape[-1]
    draws = torch.multinomial(log_weights.exp().reshape(-1, N), num, replacement=True)
    return draws.reshape(log_weights.shape[:-1] + (num,))


def _gather(particles: Tensor, index: Tensor) -> Tensor:
    """``particles[..., index, :]`` per system: ``[*B, N, d]`` by ``[*B, M]``."""
    return torch.take_along_dim(particles, index.unsqueeze(-1), dim=-2)


def conditional_steps(ssm: StateSpaceModel, ys: Tensor, reference: Tensor | None,
                      num_particles: int, num_chains: int | None = None
                      ) -> Iterator[FilterStep]:
    """The steps (:class:`~.filter.FilterStep`) of conditional SMC given ``reference``.

    ``reference`` is ``[T, d]`` (particles ``[N, d]``) or ``[C, T, d]`` (``C``
    independent systems, particles ``[C, N, d]``); it is pinned at particle index
    ``N - 1``. ``reference=None`` runs the same filter unconditioned, for
    ``num_chains`` systems (``None``: one system, ``[N, d]``).
    """
    N = num_particles
    if reference is not None:
        batch = tuple(reference.shape[:-2])
    else:
        batch = () if num_chains is None else (num_chains,)
    monitor = WeightMonitor(N, "conditional SMC")
    x = log_w = None
    for t in range(ys.shape[0]):
        x_prev, log_w_prev = x, log_w
        if t == 0:
            x = ssm.initial().sample(batch + (N,))
        else:
            x = ssm.sample_transition(_gather(x, _multinomial(log_w, N)), t)
        if reference is not None:
            x = torch.cat([x[..., :-1, :], reference[..., t, :].unsqueeze(-2)], -2)
        increment = ssm.observation_log_prob(x, ys[t], t)
        normalizer = torch.logsumexp(increment, -1, keepdim=True)
        log_w = increment - normalizer
        if not torch.isfinite(normalizer).all():
            monitor(float("nan"), increment, ys[t], t)
        yield FilterStep(t, ys[t], x_prev, log_w_prev, x, log_w, None,
                         (normalizer.squeeze(-1) - math.log(N)))


def backward_path(particles: list[Tensor], log_weights: list[Tensor], ssm: StateSpaceModel,
                  backward) -> Tensor:
    """One path per system drawn by backward sampling from a stored particle system:
    ``particles[t]`` ``[*B, N, d]`` and ``log_weights[t]`` ``[*B, N]`` give ``[*B, T, d]``.
    ``backward(previous, log_weights, x, t)`` draws the indices (``x`` is ``[*B, 1, d]``).
    """
    index = _multinomial(log_weights[-1], 1)
    path = [_gather(particles[-1], index)]
    for t in range(len(particles) - 1, 0, -1):
        index = backward(particles[t - 1], log_weights[t - 1], path[-1], t)
        path.append(_gather(particles[t - 1], index.reshape(index.shape[:-1] + (1,))))
    return torch.cat(path[::-1], -2)


@dataclass
class ParticleGibbsResult:
    """``paths``: ``[num_chains, num_iters, T, state_dim]``; ``burn_in``: the draws
    :meth:`to_inference_data` drops by default; ``bound_violations``: ``(t, excess)``
    where a transition density exceeded ``transition_log_bound(t)``."""

    paths: Tensor
    burn_in: int = 0
    bound_violations: list[tuple[int, float]] = field(default_factory=list)

    def to_inference_data(self, burn_in: int | None = None):
        """The paths as a posterior over ``x`` with dims (chain, draw, time, state_dim),
        without the first ``burn_in`` draws (default: the result's ``burn_in``).

        Under a process group it gathers every rank's chains (rank 0's first; call it on
        every rank): the same ``InferenceData`` on every rank. ``paths`` stays local."""
        import arviz as az

        burn_in = self.burn_in if burn_in is None else check_int("burn_in", burn_in, 0)
        if burn_in >= self.paths.shape[1]:
            raise ValueError(f"burn_in ({burn_in}) must be < the number of draws "
                             f"({self.paths.shape[1]})")
        return az.from_dict(
            posterior=gather_chains({"x": self.paths[:, burn_in:]}),
            dims={"x": ["time", "state_dim"]},
        )


class ParticleGibbs:
    """Particle Gibbs with backward sampling, its chains batched.

    Args:
        ssm: the model.
        num_particles: ``N >= 2`` per conditional SMC sweep.
        backward: ``"auto"``, ``"exact"`` or ``"rejection"`` backward kernel.
        max_trials: proposals per accept-reject draw before the exact fallback.
        missing: treat NaN in ``ys`` as missing observations.
        progress: show a ``tqdm`` bar over iterations (``None``: on a terminal only).

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> ys = ssm.simulate(T=30).observations
        >>> result = ParticleGibbs(ssm, 50, progress=False).run(ys, num_iters=5, num_chains=2)
        >>> result.paths.shape
        torch.Size([2, 5, 30, 1])
    """

    def __init__(self, ssm: StateSpaceModel, num_particles: int = 100, backward: str = "auto",
                 max_trials: int | None = None, missing: bool = False,
                 progress: bool | None = None) -> None:
        self.ssm = validate_model(ssm)
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.backward = backward_sampler(ssm, backward, max_trials)
        self.missing, self.progress = bool(missing), progress

    def initial_path(self, ys: Tensor, num_chains: int | None = None) -> Tensor:
        """Paths from an unconditional filter and backward sampling: ``[T, d]``, or
        ``[num_chains, T, d]`` (one independent filter per chain)."""
        particles, log_weights = [], []
        for step in conditional_steps(self.ssm, ys, None, self.num_particles, num_chains):
            particles.append(step.particles)
            log_weights.append(step.log_weights)
        return backward_path(particles, log_weights, self.ssm, self.backward)

    def step(self, ys: Tensor, reference: Tensor) -> Tensor:
        """One particle Gibbs update of ``reference`` (``[T, d]`` or ``[C, T, d]``)."""
        particles, log_weights = [], []
        for step in conditional_steps(self.ssm, ys, reference, self.num_particles):
            particles.append(step.particles)
            log_weights.append(step.log_weights)
        return backward_path(particles, log_weights, self.ssm, self.backward)

    @torch.no_grad()
    def run(self, ys: Tensor, num_iters: int = 500, num_chains: int = 1,
            callback: Callable[[int, int, Tensor], None] | None = None,
            burn_in: int | None = None) -> ParticleGibbsResult:
        """``num_chains`` independent chains of ``num_iters`` paths each, run together.

        ``callback(chain, iteration, path)`` is called for every chain after every
        sweep. ``burn_in`` (default ``num_iters // 5``) is stored in the result for
        :meth:`ParticleGibbsResult.to_inference_data`.

        Under a process group ``num_chains`` counts this rank's chains (``W`` ranks run
        ``W · num_chains``; see the module docstring); ``callback`` gets this rank's
        chain index.
        """
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        check_int("num_iters", num_iters, 1)
        check_int("num_chains", num_chains, 1)
        burn_in = num_iters // 5 if burn_in is None else check_int("burn_in", burn_in, 0)
        if burn_in >= num_iters:
            raise ValueError(f"burn_in ({burn_in}) must be < num_iters ({num_iters})")
        violations = len(self.backward.bound_violations)
        distributed.separate_stream()
        path, paths = self.initial_path(ys, num_chains), []
        for iteration in progress_bar(range(num_iters), progress=self.progress,
                                      desc="ParticleGibbs"):
            path = self.step(ys, path)
            paths.append(path)
            if callback is not None:
                for chain in range(num_chains):
                    callback(chain, iteration, path[chain])
        return ParticleGibbsResult(torch.stack(paths, 1), burn_in,
                                   list(self.backward.bound_violations[violations:]))
