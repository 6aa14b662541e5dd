"""The Parisian particle Gibbs sampler (Cardoso, Janati, Le Corff, Moulines & Olsson,
ICML 2023, algorithm 2).

Each iteration runs one conditional SMC sweep given the reference path, with PaRIS
statistics for all ``N`` particles (the frozen one included), and yields the estimate
``Σ_i W_{T-1}^i τ_{T-1}^i`` of ``E[Σ_t h_t | y]``. The next reference path is drawn
through the PaRIS backward indices: an index at ``T - 1`` from the final weights, then
at each earlier step one of the particle's ``Ñ`` backward indices uniformly. The
estimate averages iterations ``burn_in + 1, ..., num_iters``; its bias falls with the
number of iterations where PaRIS's only falls with ``N``.

**Under a process group** (:mod:`posterity.infer.distributed`) ``parallel`` chooses
what the ranks split:

* ``"particles"`` (the default): one chain whose sweeps spread the ``N`` particles over
  the ``W`` ranks, ``N / W`` on each (``num_particles`` divisible by ``W``). The frozen
  reference sits at the last global slot (the last rank's last particle) and keeps it
  through resampling; the other ``N - 1`` offspring are global multinomial draws
  (:func:`.across_ranks.conditional_resample_in_place`: the offspring that change rank
  travel, already moved, in the all-gather that reduces the normalizing constants, as
  in the particle filter); the normalizing constants are reduced
  over the ranks; the PaRIS backward draws index the previous cloud of every rank (the
  code path of distributed :class:`~.paris.PaRIS`); the next reference path follows
  global backward indices chosen with draws common to all ranks
  (:func:`path_across_ranks`), so every rank holds the same path. A sweep has the law of
  the one-process sweep with the same ``N``, and the estimates and path are the same on
  every rank. Per step this costs what distributed PaRIS costs (an all-gather of the
  previous cloud, its weights and statistics, and the normalizing one); per sweep,
  one all-gather of the chosen backward index of every particle at every step
  (``4 N T`` bytes on every rank: the one part of a sweep's memory that does not
  shrink with ``W``) and three small collectives (the final index, the path, the
  estimate).
* ``"chains"``: every rank runs its own chain with all ``N`` particles from its own
  random stream, so ``W`` ranks run ``W`` chains; ``estimate`` averages the chains,
  ``estimates`` and ``path`` stay local, and ``to_inference_data()`` gathers the chains
  into one ``InferenceData`` whose ESS and R-hat see ``W`` chains.

Particles are the default because ``num_particles`` is global for every particle
method (the filter, PaRIS, PaRIS score ascent), and because spreading them is what lets
``N`` exceed one device's memory and divides each sweep's work; chains are the
choice for ``W`` chains to compare by R-hat. Outside a process group both are the
one-process sampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from .. import distributed
from ..checks import check_choice, check_int
from ..inference_data import gather_chains
from ..progress import progress_bar
from . import across_ranks as ranks
from .backward import backward_sampler
from .filter import FilterStep, WeightMonitor
from .paris import AdditiveFunctional, paris_update
from .particle_gibbs import ParticleGibbs, conditional_steps
from .protocol import validate_model

PARALLEL = ("particles", "chains")


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


def conditional_steps_across_ranks(ssm: StateSpaceModel, ys: Tensor, reference: Tensor | None,
                                  num_particles: int, generator: torch.Generator
                                  ) -> Iterator[FilterStep]:
    """The steps of conditional SMC given ``reference`` (``[T, d]``, the same on every
    rank) with the ``N = num_particles`` particles spread over the ranks: this rank's
    ``[N / W, d]``, log-weights normalized over all ranks, global ``log_evidence`` and
    ``ess``, ``ancestors`` indexing the global previous cloud.

    The reference is pinned at the last global slot ``N - 1`` (the last rank's last
    particle), where :func:`~.particle_gibbs.conditional_steps` pins it in one process;
    the other particles resample multinomially over all ranks at every step
    (:func:`.across_ranks.conditional_resample`). ``reference=None`` runs the same filter
    unconditioned (global multinomial resampling). ``generator`` is shared by the ranks
    (:func:`.across_ranks.shared_generator`). Every rank must iterate it.

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> ys, reference = ssm.simulate(T=5).observations, ssm.simulate(T=5).states
        >>> steps = list(conditional_steps_across_ranks(ssm, ys, reference, 8,
        ...                                             torch.Generator().manual_seed(0)))
        >>> all(bool((step.particles[-1] == reference[step.t]).all()) for step in steps)
        True
    """
    size = distributed.world_size()
    n = num_particles // size
    pinned = reference is not None and distributed.rank() == size - 1
    monitor = WeightMonitor(num_particles, "conditional SMC")
    x = log_w = totals = None
    for t in range(ys.shape[0]):
        x_prev, log_w_prev, ancestors, pending = x, log_w, None, None
        if t == 0:
            x = ssm.initial().sample((n,))
        else:
            if torch.is_grad_enabled():  # exchange first: moved rows carry no graph
                x, ancestors = (
                    ranks.resample(x, log_w, "multinomial", generator, totals)
                    if reference is None
                    else ranks.conditional_resample(x, log_w, generator, totals))
            else:  # the surplus moves in the normalizing all-gather, as in the filter
                x, ancestors, pending = (
                    ranks.resample_in_place(x, log_w, "multinomial", generator, totals)
                    if reference is None
                    else ranks.conditional_resample_in_place(x, log_w, generator, totals))
            x = ssm.sample_transition(x, t)
        if pinned:
            x = torch.cat([x[:-1], reference[t].unsqueeze(0)])
        increment = ssm.observation_log_prob(x, ys[t], t)
        if pending is None:
            normalized = ranks.normalize(increment)
        else:
            normalized = ranks.normalize_moving(increment, x, ancestors, pending)
            x, ancestors = normalized.rows
            increment = increment[:pending.own]  # this rank's own rows, for the monitor
        log_normalizer, log_w, ess, totals = normalized[:4]
        if not torch.isfinite(log_normalizer):  # global: every rank raises
            monitor(float("nan"), increment, ys[t], t)
        yield FilterStep(t, ys[t], x_prev, log_w_prev, x, log_w, ancestors,
                         log_normalizer - math.log(num_particles), ess)


def path_across_ranks(particles: list[Tensor], indices: list[Tensor | None], weights: Tensor,
                      generator: torch.Generator) -> Tensor:
    """:func:`path_through_backward_indices` for a sweep spread over the ranks: the same
    path ``[T, d]`` on every rank.

    ``particles[t]`` ``[n, d]`` and the final ``weights`` ``[n]`` (normalized over all
    ranks) are this rank's; ``indices[t]`` ``[n, Ñ]`` index the global cloud of step
    ``t - 1``. The index at ``T - 1`` is the winner of an exponential race over every
    rank's weights (``argmax_i log W_i - log E_i``, ``E_i ~ Exp(1)``: a draw ``∝ W_i``)
    and the column of each step's backward indices comes from ``generator`` (common to
    all ranks), so that one all-gather of the chosen columns lets every rank follow the
    same indices; one all-reduce then assembles the path from the ranks that hold its
    states.

    Example:
        >>> particles = [torch.randn(4, 1) for _ in range(3)]
        >>> indices = [None] + [torch.randint(4, (4, 2)) for _ in range(2)]
        >>> path_across_ranks(particles, indices, torch.full((4,), 0.25),
        ...                   torch.Generator().manual_seed(0)).shape
        torch.Size([3, 1])
    """
    n, me, T = weights.shape[0], distributed.rank(), len(particles)
    race = weights.log() - torch.empty_like(weights).exponential_().log()
    best = race.argmax()
    entries = ranks.gather_rows(torch.stack([race[best].double(),
                                             (best + me * n).double()]).unsqueeze(0))
    index = int(entries[entries[:, 0].argmax(), 1])
    trail = [index]
    if T > 1:
        choices = torch.randint(indices[1].shape[1], (T - 1,), generator=generator).tolist()
        columns = torch.stack([indices[t][:, c] for t, c in zip(range(1, T), choices)], 1)
        if n * distributed.world_size() < 2**31:
            columns = columns.to(torch.int32)
        table = ranks.gather_rows(columns)  # [N, T - 1]: the chosen index of every step
        for t in range(T - 1, 0, -1):
            index = int(table[index, t - 1])
            trail.append(index)
    local = [j - me * n for j in trail[::-1]]
    rows = [p[j] if 0 <= j < n else p.new_zeros(p.shape[-1]) for p, j in zip(particles, local)]
    return distributed.all_reduce_sum(torch.stack(rows))


@dataclass
class PPGResult:
    """``estimate`` ``[k]`` (the average over iterations after burn-in), the
    per-iteration ``estimates`` ``[num_iters, k]``, the last reference ``path``
    ``[T, d]`` and ``bound_violations`` (``(t, excess)`` where a transition density
    exceeded ``transition_log_bound(t)``; those steps used the exact kernel; this
    rank's).

    ``across_ranks``: the one chain's sweeps were spread over the ranks
    (``parallel="particles"`` under a process group): ``estimate``, ``estimates`` and
    ``path`` are global, the same on every rank. Otherwise, under a process group, each
    rank ran its own chain: ``estimates`` and ``path`` are this rank's and ``estimate``
    averages every rank's chain."""

    estimate: Tensor
    estimates: Tensor
    path: Tensor
    burn_in: int = 0
    bound_violations: list[tuple[int, float]] = field(default_factory=list)
    across_ranks: bool = False

    def to_inference_data(self):
        """Per-iteration estimates after burn-in as chains (ArviZ gives their ESS and
        Monte Carlo error), and the last reference path of the first chain.

        One chain in one process, and when the sweeps were spread over the ranks (the
        same ``InferenceData`` on every rank). With one chain per rank it gathers every
        rank's chain (rank 0's first; call it on every rank)."""
        import arviz as az

        arrays = {"estimate": self.estimates[self.burn_in:][None], "path": self.path[None]}
        gathered = ({k: v.detach().cpu().numpy() for k, v in arrays.items()}
                    if self.across_ranks else gather_chains(arrays))
        return az.from_dict(
            posterior={"estimate": gathered["estimate"]},
            constant_data={"path": gathered["path"][0]},
            dims={"estimate": ["functional"], "path": ["time", "state_dim"]},
        )


class PPG:
    """Parisian particle Gibbs.

    Args:
        ssm, h: the model and the additive term ``h(x_prev, x, y, t) -> [..., k]``.
        num_particles: ``N >= 2`` per sweep (in all, under a process group with
            ``parallel="particles"``: divisible by the number of processes).
        num_iters: iterations; ``burn_in`` of them (``< num_iters``) are discarded.
        num_backward: ``Ñ >= 1`` backward draws per particle.
        backward: ``"auto"``, ``"exact"`` or ``"rejection"``.
        max_trials: proposals per accept-reject draw before the exact fallback.
        missing: treat NaN in ``ys`` as missing observations.
        progress: a ``tqdm`` bar over iterations (``None``: on a terminal only).
        parallel: under a process group, ``"particles"`` (default) spreads each sweep's
            particles over the ranks (one chain, the law of one process with the same
            ``N``, ``N`` beyond one device's memory); ``"chains"`` runs one chain per
            rank with all ``N`` particles (``W`` chains for R-hat). See the module
            docstring. Outside a process group it changes nothing.

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
                 progress: bool | None = None, *, parallel: str = "particles") -> None:
        if not callable(h):
            raise TypeError(f"h must be a callable h(x_prev, x, y, t), got {type(h).__name__}")
        self.ssm, self.h = validate_model(ssm), h
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.num_iters = check_int("num_iters", num_iters, 1)
        self.burn_in = check_int("burn_in", burn_in, 0)
        if self.burn_in >= self.num_iters:
            raise ValueError(f"burn_in ({burn_in}) must be < num_iters ({num_iters})")
        self.num_backward = check_int("num_backward", num_backward, 1)
        self.parallel = check_choice("parallel", parallel, PARALLEL)
        self.spread()  # the divisibility error when the group exists already
        self.backward = backward_sampler(ssm, backward, max_trials, num_particles)
        self.missing, self.progress = bool(missing), progress

    def spread(self) -> bool:
        """Whether the sweeps spread their particles over the ranks (``parallel=
        "particles"`` inside a process group); a ``ValueError`` when the number of
        processes does not divide ``num_particles`` then."""
        if self.parallel != "particles" or not distributed.is_initialized():
            return False
        distributed.check_divisible("num_particles", self.num_particles)
        return True

    @torch.no_grad()
    def sweep(self, ys: Tensor, reference: Tensor | None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One iteration: the estimate ``[k]`` and the next reference path ``[T, d]``
        (``reference=None``: an unconditional sweep).

        Spread over the ranks, every rank must call it with the same ``reference``; both
        results are global, the same on every rank. ``generator`` holds the draws the
        ranks share (default: a new :func:`.across_ranks.shared_generator`)."""
        spread = self.spread()
        if spread:
            generator = ranks.shared_generator(ys.device) if generator is None else generator
            steps = conditional_steps_across_ranks(self.ssm, ys, reference, self.num_particles,
                                                   generator)
        else:
            steps = conditional_steps(self.ssm, ys, reference, self.num_particles)
        statistics, particles, indices = None, [], []
        for step in steps:
            statistics, backward = paris_update(step, statistics, self.h, self.backward,
                                                self.num_backward, across_ranks=spread)
            particles.append(step.particles)
            indices.append(backward)
        weights = step.log_weights.exp()
        if not spread:
            return weights @ statistics, path_through_backward_indices(particles, indices,
                                                                       weights)
        return (distributed.all_reduce_sum(weights @ statistics),
                path_across_ranks(particles, indices, weights, generator))

    @torch.no_grad()
    def run(self, ys: Tensor, reference: Tensor | None = None) -> PPGResult:
        """``num_iters`` sweeps from ``reference`` (``[T, d]``; default: a path from an
        unconditional filter).

        Under a process group, call it on every rank. Spread over the ranks (the
        default), the ranks run one chain: a ``reference`` is taken from rank 0 and the
        default one comes from an unconditional sweep spread over the ranks. With
        ``parallel="chains"`` each rank runs its own chain and the estimate is averaged
        over the ranks (see the module docstring)."""
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        spread, generator = self.spread(), None
        if reference is not None and tuple(reference.shape) != (ys.shape[0],
                                                                self.ssm.state_dim):
            raise ValueError(f"reference must have shape [T, state_dim] = "
                             f"[{ys.shape[0]}, {self.ssm.state_dim}], got "
                             f"{tuple(reference.shape)}")
        violations = len(self.backward.bound_violations)
        if spread:
            generator = ranks.shared_generator(ys.device)
            if reference is None:
                reference = self.sweep(ys, None, generator)[1]
            else:
                reference = distributed.broadcast(reference.to(ys).clone().contiguous())
        else:
            distributed.separate_stream()
            if reference is None:
                reference = ParticleGibbs(self.ssm, self.num_particles, progress=False,
                                          backward="exact",
                                          missing=self.missing).initial_path(ys)
        estimates = []
        for _ in progress_bar(range(self.num_iters), progress=self.progress, desc="PPG"):
            estimate, reference = self.sweep(ys, reference, generator)
            estimates.append(estimate)
        estimates = torch.stack(estimates)
        estimate = estimates[self.burn_in:].mean(0)
        if not spread:  # one chain per rank (one in all outside a group): their mean
            estimate = distributed.all_reduce_sum(estimate) / distributed.world_size()
        return PPGResult(estimate, estimates, reference, self.burn_in,
                         list(self.backward.bound_violations[violations:]), spread)
