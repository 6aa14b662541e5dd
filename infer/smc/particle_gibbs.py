"""Conditional SMC and particle Gibbs with backward sampling.

Conditional SMC (Andrieu, Doucet & Holenstein 2010) runs a bootstrap filter in which the
last particle is pinned to a reference path at every step; the others resample
multinomially at every step. Drawing a new path from that particle system by backward
sampling (Whiteley 2010; Lindsten & Schön 2013) gives a Markov kernel on paths that
leaves the smoothing distribution invariant: particle Gibbs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from posterity.models.ssm import StateSpaceModel

from ..checks import check_int
from .backward import backward_sampler
from .filter import FilterStep, ParticleFilter


def conditional_steps(ssm: StateSpaceModel, ys: Tensor, reference: Tensor,
                      num_particles: int):
    """The steps (:class:`~.filter.FilterStep`) of conditional SMC given ``reference``
    ``[T, d]``, pinned at particle index ``N - 1``."""
    N = num_particles
    x = log_w = None
    for t in range(ys.shape[0]):
        x_prev, log_w_prev = x, log_w
        if t == 0:
            x = ssm.initial().sample((N,))
        else:
            ancestors = torch.multinomial(log_w.exp(), N, replacement=True)
            x = ssm.sample_transition(x[ancestors], t)
        x = torch.cat([x[:-1], reference[t].unsqueeze(0)])
        increment = ssm.observation_log_prob(x, ys[t], t)
        step_log_evidence = torch.logsumexp(increment, 0) - math.log(N)
        log_w = increment - torch.logsumexp(increment, 0)
        yield FilterStep(t, ys[t], x_prev, log_w_prev, x, log_w, None, step_log_evidence)


def backward_path(particles: list[Tensor], log_weights: list[Tensor], ssm: StateSpaceModel,
                  backward) -> Tensor:
    """One path ``[T, d]`` drawn by backward sampling from a stored particle system."""
    T = len(particles)
    index = torch.multinomial(log_weights[-1].exp(), 1)
    path = [particles[-1][index]]
    for t in range(T - 1, 0, -1):
        index = backward(particles[t - 1], log_weights[t - 1], path[0], t)
        path.insert(0, particles[t - 1][index])
    return torch.cat(path)


@dataclass
class ParticleGibbsResult:
    """``paths``: ``[num_chains, num_iters, T, state_dim]``."""

    paths: Tensor

    def to_inference_data(self, burn_in: int = 0):
        """The paths as a posterior over ``x`` with dims (chain, draw, time, state)."""
        import arviz as az

        return az.from_dict(
            posterior={"x": self.paths[:, burn_in:].cpu().numpy()},
            dims={"x": ["time", "state_dim"]},
        )


class ParticleGibbs:
    """Particle Gibbs with backward sampling.

    Args:
        ssm: the model.
        num_particles: ``N >= 2`` per conditional SMC sweep.
        backward: ``"auto"``, ``"exact"`` or ``"rejection"`` backward kernel.
        missing: treat NaN in ``ys`` as missing observations.
        progress: show a ``tqdm`` bar over iterations.

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
                 progress: bool = True) -> None:
        self.ssm = ssm
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.backward = backward_sampler(ssm, backward, max_trials)
        self.missing, self.progress = bool(missing), progress

    def initial_path(self, ys: Tensor) -> Tensor:
        """A path from an unconditional filter and backward sampling."""
        particles, log_weights = [], []
        for step in ParticleFilter(self.ssm, self.num_particles, ess_threshold=1.0,
                                   missing=self.missing, progress=False).steps(ys):
            particles.append(step.particles)
            log_weights.append(step.log_weights)
        return backward_path(particles, log_weights, self.ssm, self.backward)

    def step(self, ys: Tensor, reference: Tensor) -> Tensor:
        """One particle Gibbs update of the path ``reference``."""
        particles, log_weights = [], []
        for step in conditional_steps(self.ssm, ys, reference, self.num_particles):
            particles.append(step.particles)
            log_weights.append(step.log_weights)
        return backward_path(particles, log_weights, self.ssm, self.backward)

    @torch.no_grad()
    def run(self, ys: Tensor, num_iters: int = 500, num_chains: int = 1,
            callback: Callable[[int, int, Tensor], None] | None = None) -> ParticleGibbsResult:
        """``num_chains`` independent chains of ``num_iters`` paths each."""
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        check_int("num_iters", num_iters, 1)
        check_int("num_chains", num_chains, 1)
        chains = []
        bar = tqdm(total=num_iters * num_chains, disable=not self.progress,
                   desc="ParticleGibbs", leave=False)
        for chain in range(num_chains):
            path, paths = self.initial_path(ys), []
            for iteration in range(num_iters):
                path = self.step(ys, path)
                paths.append(path)
                if callback is not None:
                    callback(chain, iteration, path)
                bar.update()
            chains.append(torch.stack(paths))
        bar.close()
        return ParticleGibbsResult(torch.stack(chains))
