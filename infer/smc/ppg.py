"""The Parisian particle Gibbs sampler (Cardoso, Janati, Le Corff, Moulines & Olsson,
ICML 2023, algorithm 2).

Each iteration runs one conditional SMC sweep given the reference path, with PaRIS
statistics for all ``N`` particles (the frozen one included), and yields the estimate
``Σ_i W_{T-1}^i τ_{T-1}^i`` of ``E[Σ_t h_t | y]``. The next reference path is drawn
through the PaRIS backward indices: an index at ``T - 1`` from the final weights, then
at each earlier step one of the particle's ``Ñ`` backward indices uniformly. The
estimate averages iterations ``burn_in + 1, ..., num_iters``; its bias falls with the
number of iterations where PaRIS's only falls with ``N``.

Under a process group (:mod:`posterity.infer.distributed`) PPG is chain-parallel:
every rank runs one chain of ``num_iters`` sweeps from its own random stream (the
sweeps are as in one process, with all ``N`` particles on the rank), so ``W`` ranks
run ``W`` chains. The result's ``estimate`` averages every rank's chain (the same on
every rank); ``estimates`` and ``path`` stay local, and ``to_inference_data()``
gathers the chains into one ``InferenceData``, whose ESS and R-hat then see ``W``
chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from .. import distributed
from ..checks import check_int
from ..inference_data import gather_chains
from ..progress import progress_bar
from .backward import backward_sampler
from .paris import AdditiveFunctional, paris_update
from .particle_gibbs import ParticleGibbs, conditional_steps
from .protocol import validate_model


def path_through_backward_indices(particles: list[Tensor], indices: list[Tensor | None],
                                  weights: Tensor) -> Tensor:
    """PPG's next reference path ``[T, d]``: an index at ``T - 1`` drawn from
    ``weights``, then at each earlier step one of that particle's ``Ñ`` backward indices
    (``indices[t]`` is ``[N, Ñ]``) uniformly."""
    index = torch.multinomial(weights, 1)
    path = [particles[-1][index]]
    for t in range(len(particles) - 1, 0, -1):
        choice = torch.randint(indices[t].shape[1], (1,), device=weights.device)
        index = indices[t][index, choice]
        path.append(particles[t - 1][index])
    return torch.cat(path[::-1])


@dataclass
class PPGResult:
    """``estimate`` ``[k]`` (the average over iterations after burn-in, and over every
    rank's chain under a process group), the per-iteration ``estimates``
    ``[num_iters, k]``, the last reference ``path`` ``[T, d]`` (both this rank's) and
    ``bound_violations`` (``(t, excess)`` where a transition density exceeded
    ``transition_log_bound(t)``; those steps used the exact kernel)."""

    estimate: Tensor
    estimates: Tensor
    path: Tensor
    burn_in: int = 0
    bound_violations: list[tuple[int, float]] = field(default_factory=list)

    def to_inference_data(self):
        """Per-iteration estimates after burn-in as one chain per rank (ArviZ gives their
        ESS and Monte Carlo error), and the last reference path of the first chain.

        Under a process group it gathers every rank's chain (rank 0's first; call it on
        every rank): the same ``InferenceData`` on every rank."""
        import arviz as az

        gathered = gather_chains({"estimate": self.estimates[self.burn_in:][None],
                                  "path": self.path[None]})
        return az.from_dict(
            posterior={"estimate": gathered["estimate"]},
            constant_data={"path": gathered["path"][0]},
            dims={"estimate": ["functional"], "path": ["time", "state_dim"]},
        )


class PPG:
    """Parisian particle Gibbs.

    Args:
        ssm, h: the model and the additive term ``h(x_prev, x, y, t) -> [..., k]``.
        num_particles: ``N >= 2`` per sweep.
        num_iters: iterations; ``burn_in`` of them (``< num_iters``) are discarded.
        num_backward: ``Ñ >= 1`` backward draws per particle.
        backward: ``"auto"``, ``"exact"`` or ``"rejection"``.
        max_trials: proposals per accept-reject draw before the exact fallback.
        missing: treat NaN in ``ys`` as missing observations.
        progress: a ``tqdm`` bar over iterations (``None``: on a terminal only).

    Each sweep is the conditional SMC of :class:`~.particle_gibbs.ParticleGibbs` (one
    system, particles ``[N, d]``); ``h`` is checked as in :class:`~.paris.PaRIS`.

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> ys = ssm.simulate(T=30).observations
        >>> PPG(ssm, lambda xp, x, y, t: x, num_particles=50, num_iters=5, burn_in=1,
        ...     progress=False).run(ys).estimates.shape
        torch.Size([5, 1])
    """

    def __init__(self, ssm: StateSpaceModel, h: AdditiveFunctional, num_particles: int = 100,
                 num_iters: int = 50, burn_in: int = 10, num_backward: int = 2,
                 backward: str = "auto", max_trials: int | None = None, missing: bool = False,
                 progress: bool | None = None) -> None:
        if not callable(h):
            raise TypeError(f"h must be a callable h(x_prev, x, y, t), got {type(h).__name__}")
        self.ssm, self.h = validate_model(ssm), h
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.num_iters = check_int("num_iters", num_iters, 1)
        self.burn_in = check_int("burn_in", burn_in, 0)
        if self.burn_in >= self.num_iters:
            raise ValueError(f"burn_in ({burn_in}) must be < num_iters ({num_iters})")
        self.num_backward = check_int("num_backward", num_backward, 1)
        self.backward = backward_sampler(ssm, backward, max_trials, num_particles)
        self.missing, self.progress = bool(missing), progress

    def sweep(self, ys: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """One iteration: the estimate ``[k]`` and the next reference path ``[T, d]``."""
        statistics, particles, indices = None, [], []
        for step in conditional_steps(self.ssm, ys, reference, self.num_particles):
            statistics, backward = paris_update(step, statistics, self.h, self.backward,
                                                self.num_backward)
            particles.append(step.particles)
            indices.append(backward)
        weights = step.log_weights.exp()
        return weights @ statistics, path_through_backward_indices(particles, indices, weights)

    @torch.no_grad()
    def run(self, ys: Tensor, reference: Tensor | None = None) -> PPGResult:
        """``num_iters`` sweeps from ``reference`` (``[T, d]``; default: a path from an
        unconditional filter).

        Under a process group, call it on every rank: each runs its own chain (see the
        module docstring) and the estimate is averaged over the ranks."""
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        distributed.separate_stream()
        if reference is None:
            reference = ParticleGibbs(self.ssm, self.num_particles, progress=False,
                                      backward="exact", missing=self.missing).initial_path(ys)
        elif tuple(reference.shape) != (ys.shape[0], self.ssm.state_dim):
            raise ValueError(f"reference must have shape [T, state_dim] = "
                             f"[{ys.shape[0]}, {self.ssm.state_dim}], got "
                             f"{tuple(reference.shape)}")
        violations = len(self.backward.bound_violations)
        estimates = []
        for _ in progress_bar(range(self.num_iters), progress=self.progress, desc="PPG"):
            estimate, reference = self.sweep(ys, reference)
            estimates.append(estimate)
        estimates = torch.stack(estimates)
        estimate = distributed.all_reduce_sum(estimates[self.burn_in:].mean(0))
        return PPGResult(estimate / distributed.world_size(), estimates, reference, self.burn_in,
                         list(self.backward.bound_violations[violations:]))
