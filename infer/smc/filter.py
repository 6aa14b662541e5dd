"""The particle filter (Gordon, Salmond & Smith 1993), with adaptive resampling.

At each step ``t`` particles move through the proposal (by default the transition:
the bootstrap filter), are weighted by
``w_t = g_t(y_t | x_t) f_t(x_t | x_{t-1}) / q_t(x_t | x_{t-1})``, and are resampled
when the effective sample size falls below ``ess_threshold * N``. The evidence
estimate ``Ẑ = Π_t Σ_i W_{t-1}^i w_t^i`` is unbiased (Del Moral 2004) and is kept in
log space. Everything is vectorized over particles.

**Across ranks.** Inside a process group (:mod:`posterity.infer.distributed`) the
``N = num_particles`` particles are spread over the ``W`` ranks, ``N / W`` on each
(rank ``r`` holds particles ``r N/W, ..., (r+1) N/W - 1`` of the global cloud). The
normalizing constants, the ESS and the filtering moments are reduced over the ranks,
the decision to resample is global, and resampling is global and exact
(:mod:`.across_ranks`): the result has the law of the one-process filter with the same
``N``, for all four schemes. Each step makes one collective: the ranks keep their
offspring through the move, and the ones that change rank travel, already moved and
weighted, in the all-gather that normalizes the weights and reduces the moments
(:func:`.across_ranks.resample_in_place`; under autograd, a separate exchange before the
move).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from .. import distributed
from ..checks import check_int, user_stacklevel
from ..progress import progress_bar
from . import across_ranks as ranks
from .protocol import validate_model
from .resampling import resampler


class FilterStep(NamedTuple):
    """One step of the filter.

    ``previous`` and ``previous_log_weights`` are the cloud of step ``t - 1`` with its
    filtering weights, before any resampling (what backward kernels need);
    ``particles`` and ``log_weights`` are step ``t``'s cloud; ``ancestors`` are the
    resampled indices used to move (``None`` when the step did not resample); ``ess`` is
    the effective sample size of ``log_weights``.

    Across ranks, the clouds are this rank's share, the log-weights are normalized over
    all ranks, ``ancestors`` index the global cloud of step ``t - 1`` (the rank-order
    concatenation), and ``log_evidence`` and ``ess`` are global. ``moments``, when the
    loop was asked for them, are ``[E[x_t], E[x_t²]]`` under the (global) weights,
    ``[2 d]``.
    """

    t: int
    y: Tensor
    previous: Tensor | None
    previous_log_weights: Tensor | None
    particles: Tensor
    log_weights: Tensor
    ancestors: Tensor | None
    log_evidence: Tensor
    ess: float = float("nan")
    moments: Tensor | None = None


@dataclass
class FilterResult:
    """What a run of :class:`ParticleFilter` returns.

    Attributes:
        log_evidence: ``log Ẑ``, the log of an unbiased estimate of ``p(y_{0:T-1})``.
        filter_mean: ``E[x_t | y_{0:t}]`` estimates, ``[T, state_dim]``.
        filter_var: the matching marginal variances, ``[T, state_dim]``.
        ess: the effective sample size after weighting, ``[T]``.
        resampled: whether the step resampled before moving, ``[T]``.
        particles, log_weights: the final cloud ``[N, state_dim]`` and its normalized
            log weights ``[N]``.
        history: with ``keep_history=True``: ``particles`` ``[T, N, d]``,
            ``log_weights`` ``[T, N]`` and ``ancestors`` ``[T, N]`` (``ancestors[t]``
            indexes the particles of step ``t - 1``).

    Across ranks, ``log_evidence``, ``filter_mean``, ``filter_var``, ``ess`` and
    ``resampled`` are global and the same on every rank; ``particles``,
    ``log_weights`` and the history hold this rank's ``N / W`` particles (log-weights
    normalized over all ranks), and ``history["ancestors"][t]`` index the global cloud
    of step ``t - 1``: rank ``r``'s particles at positions ``r N/W, ..., (r+1) N/W - 1``
    (gather the history with :func:`posterity.infer.distributed.all_gather` to trace
    lineages).
    """

    log_evidence: Tensor
    filter_mean: Tensor
    filter_var: Tensor
    ess: Tensor
    resampled: Tensor
    particles: Tensor
    log_weights: Tensor
    history: dict[str, Tensor] = field(default_factory=dict)

    def to_inference_data(self):
        """ESS history, filtering moments and the log-evidence as ``InferenceData``
        (group ``filtering``)."""
        import arviz as az
        import numpy as np
        import xarray as xr

        T = self.filter_mean.shape[0]
        return az.InferenceData(
            filtering=xr.Dataset(
                {
                    "filter_mean": (("time", "state_dim"), self.filter_mean.cpu().numpy()),
                    "filter_var": (("time", "state_dim"), self.filter_var.cpu().numpy()),
                    "ess": ("time", self.ess.cpu().numpy()),
                    "resampled": ("time", self.resampled.cpu().numpy().astype(np.int8)),
                },
                coords={"time": np.arange(T)},
                attrs={"log_evidence": float(self.log_evidence)},
            )
        )


class WeightMonitor:
    """Called at every step with the ESS and the incremental log weights: raises
    ``FloatingPointError`` naming the time step and the cause when every weight
    vanished (NaN, +Inf, every particle at -Inf, an observation that overflows the
    dtype), and warns once per run when the ESS collapses below
    ``max(1.5, min(5, N / 100))`` particles."""

    def __init__(self, num_particles: int, engine: str) -> None:
        self.num_particles, self.engine, self.warned = num_particles, engine, False
        self.collapse = max(1.5, min(5.0, 0.01 * num_particles))

    def __call__(self, ess: float, increment: Tensor, y: Tensor, t: int) -> None:
        if ess >= 1.0 - 1e-3 and (self.warned or ess >= self.collapse):
            return
        spread = _overflow_note(increment, y)
        if not ess >= 1.0 - 1e-3:  # NaN when every weight vanished (or one is +inf)
            raise FloatingPointError(f"{self.engine}: every particle weight vanished at time "
                                     f"step {t}: {_vanished_cause(increment, y)}")
        self.warned = True
        if not distributed.is_main():  # the ESS is global: one warning per run, rank 0's
            return
        warnings.warn(
            f"{self.engine}: the effective sample size collapsed to {ess:.2f} of "
            f"{self.num_particles} particles at time step {t}{spread}; the estimates there "
            "rest on very few particles (an outlying observation, a model that misfits the "
            "data, or too few particles)", RuntimeWarning, stacklevel=user_stacklevel())


def _overflow_note(increment: Tensor, y: Tensor) -> str:
    finite = increment[torch.isfinite(increment)]
    if not finite.numel():
        return ""
    spread = float(finite.max() - finite.min())
    note = f" (incremental log weights span {spread:.3g} nats)"
    if increment.dtype != torch.float64 and spread * torch.finfo(increment.dtype).eps > 1:
        note += (f"; log weights this large lose precision in {increment.dtype}: "
                 "run the model in float64 (ssm.double())")
    return note


def _vanished_cause(increment: Tensor, y: Tensor) -> str:
    if torch.isnan(increment).any():
        return (f"the log-likelihood term is NaN for {int(torch.isnan(increment).sum())} "
                "particles (check emission_log_prob or the proposal at this step)")
    if (increment == math.inf).any():
        return "the log-likelihood term overflowed to +Inf (a degenerate emission law?)"
    finfo = torch.finfo(y.dtype)
    if not torch.isnan(y).any() and float(y.abs().max()) > math.sqrt(finfo.max):
        return (f"the observation (|y| = {float(y.abs().max()):.3g}) overflows {y.dtype} "
                f"when squared (largest {y.dtype} is {finfo.max:.3g}), so every log-density "
                "is -Inf: rescale the data or run the model in float64 (ssm.double()); "
                "more particles will not help")
    return ("the log-likelihood term is -Inf for every particle: the observation has zero "
            "density under all of them (check the model and this observation; a better "
            "proposal or more particles may help)")


def _weighted_moments(steps: list[FilterStep]) -> Tensor:
    """``[E[x], Var[x]]`` under each step's weights, ``[len(steps), 2 d]``.

    The variance is the weighted mean of squared deviations from the mean, not
    ``E[x²] - E[x]²``, which cancels catastrophically when the mean is large against the
    spread (a state near 1000 with variance 0.006 gave 0 in float32)."""
    weights = torch.stack([step.log_weights for step in steps]).exp_().unsqueeze(1)  # [k,1,N]
    particles = torch.stack([step.particles for step in steps])  # [k, N, d], a copy
    mean = weights @ particles  # [k, 1, d]
    variance = weights @ particles.sub_(mean).square_()
    return torch.cat([mean.squeeze(1), variance.squeeze(1)], -1)


class ParticleFilter:
    """Bootstrap (or guided) particle filter for a :class:`StateSpaceModel`.

    Args:
        ssm: the model.
        num_particles: ``N >= 2``.
        resampling: ``"systematic"`` (default), ``"stratified"``, ``"multinomial"`` or
            ``"residual"``.
        ess_threshold: resample when ``ESS < ess_threshold * N`` (1 resamples every step).
        proposal: ``proposal(x_prev, t, y_t) -> distribution`` over ``x_t`` (and
            ``proposal(None, 0, y_0)`` at ``t = 0``); default: the model's own laws.
        missing: treat NaN in ``ys`` as missing observations (weight 1).
        keep_history: keep every step's particles, weights and ancestors.
        progress: show a ``tqdm`` bar over time steps (``None``: on an interactive
            terminal only, see :mod:`posterity.infer.progress`).
        across_ranks: spread the particles over the ranks of the process group
            (``None``, the default: when one is initialized; ``False``: every rank runs
            its own, independent filter with all ``num_particles``, ranks > 0 on streams
            of their own). Spread, ``num_particles`` must be divisible by the number of
            processes, and every rank must pass the same ``ys`` (a ``ValueError``
            otherwise).

    The model is checked against the protocol when the filter is built
    (:func:`~.protocol.check_model`); ``ys`` is converted to the model's dtype and
    device. The filter warns once (per filter object) when the ESS collapses to a handful of
    particles, and names the time step and the cause (NaN, overflow, an observation
    that overflows the dtype) when every weight vanishes.

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> ys = ssm.simulate(T=50).observations
        >>> result = ParticleFilter(ssm, num_particles=200, progress=False).run(ys)
        >>> result.filter_mean.shape
        torch.Size([50, 1])
    """

    def __init__(
        self,
        ssm: StateSpaceModel,
        num_particles: int = 1000,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        proposal: Callable[[Tensor | None, int, Tensor], Any] | None = None,
        missing: bool = False,
        keep_history: bool = False,
        progress: bool | None = None,
        across_ranks: bool | None = None,
    ) -> None:
        self.ssm = validate_model(ssm)
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.resample = resampler(resampling)
        self.resampling = resampling
        self.across_ranks = across_ranks
        self.local_share()  # the divisibility error when the group exists already
        if not 0 <= ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
        self.ess_threshold = float(ess_threshold)
        if proposal is not None and not callable(proposal):
            raise TypeError(f"proposal must be a callable proposal(x_prev, t, y_t) -> "
                            f"distribution, got {type(proposal).__name__}")
        self.proposal, self.missing = proposal, bool(missing)
        self.keep_history, self.progress = keep_history, progress
        # warns once per filter object, however many runs
        self.weight_monitor = WeightMonitor(self.num_particles, type(self).__name__)

    def local_share(self) -> tuple[bool, int, int]:
        """Whether the particles are spread over the ranks, how many this rank holds and
        the global index of its first one."""
        spread = distributed.is_initialized() if self.across_ranks is None \
            else bool(self.across_ranks) and distributed.is_initialized()
        if not spread:
            return False, self.num_particles, 0
        n = distributed.check_divisible("num_particles", self.num_particles)
        return True, n, distributed.rank() * n

    def _move(self, x_prev: Tensor | None, t: int, y: Tensor, observed: bool, count: int
              ) -> tuple[Tensor, Tensor]:
        """New particles (``count`` of them at ``t = 0``) and their incremental log
        weights."""
        if self.proposal is None:
            x = (self.ssm.initial().sample((count,)) if x_prev is None
                 else self.ssm.sample_transition(x_prev, t))
            log_weight = None
        else:
            prior = self.ssm.initial() if x_prev is None else self.ssm.transition(x_prev, t)
            q = self.proposal(x_prev, t, y)
            if not all(callable(getattr(q, m, None)) for m in ("sample", "log_prob")):
                raise TypeError(f"proposal(x_prev, t={t}, y) must return a distribution "
                                f"(with sample and log_prob), got {type(q).__name__}")
            x = q.sample((count,) if x_prev is None else ())
            log_q = q.log_prob(x)
            self._check_proposal_draws(x, log_q, t, (count, *prior.event_shape), y)
            log_weight = prior.log_prob(x) - log_q
        if observed:
            try:
                emission = self.ssm.emission_log_prob(x, y, t)
            except ValueError as error:  # e.g. an observation outside the emission's support
                raise ValueError(f"emission_log_prob(x, y, t) at time step {t} (y = "
                                 f"{y.tolist()}): {error}") from error
            log_weight = emission if log_weight is None else log_weight + emission
        elif log_weight is None:
            log_weight = x.new_zeros(x.shape[0])
        return x, log_weight

    def _check_proposal_draws(self, x: Tensor, log_q: Tensor, t: int, shape: tuple,
                              y: Tensor) -> None:
        """A proposal's draws must be ``[N, d]`` in the observations' dtype, with one
        log-density per particle (a silent broadcast would mix up the weights)."""
        count = shape[0]
        where = f"proposal(x_prev, t={t}, y)"
        if tuple(x.shape) != shape:
            if x.dim() != len(shape):
                hint = (f"the state is an event of shape {shape[1:]}: declare it with "
                        ".to_event(1), and give the proposal no other batch dimension"
                        if x.dim() < len(shape) else
                        "at t = 0 the filter draws sample((N,)) from it, so it should have "
                        "no particle dimension" if t == 0 else
                        "it should be batched over the particles of x_prev only")
            else:
                hint = (f"its state dimension should be {shape[1]}, as the model's" if
                        x.shape[0] == shape[0] else "it should be batched over the "
                        "particles of x_prev, as the transition is")
            raise ValueError(f"{where} gave draws of shape {tuple(x.shape)}, expected "
                             f"{shape} ([particles, state_dim]): {hint}")
        if tuple(log_q.shape) != (count,):
            raise ValueError(
                f"{where}: log_prob gave shape {tuple(log_q.shape)}, expected ({count},), "
                "one log-density per particle; declare the state dimension as an event "
                "dimension, e.g. Normal(loc, scale).to_event(1)")
        if x.dtype != y.dtype:
            raise ValueError(f"{where} draws {x.dtype} particles for {y.dtype} "
                             "observations; build the proposal in the model's dtype")

    def steps(self, ys: Tensor, moments: bool = False) -> Iterator[FilterStep]:
        """Filter ``ys`` one step at a time (the loop every SMC engine shares); with
        ``moments`` each step also carries ``[E[x_t], E[x_t²]]`` (``[2 d]``)."""
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        observed = (~torch.isnan(ys).any(-1)).tolist()
        T, N = ys.shape[0], self.num_particles
        spread, n, _ = self.local_share()
        if spread:
            shapes = distributed.all_gather_objects(tuple(ys.shape))
            if len(set(shapes)) > 1:
                raise ValueError("every rank must filter the same observations: ys has shape "
                                 + ", ".join(f"{tuple(s)} on rank {r}"
                                             for r, s in enumerate(shapes)))
        elif distributed.is_initialized():  # a filter per rank: independent ones
            distributed.separate_stream()
        # the draws every rank must agree on (and distinct particle draws per rank)
        shared = ranks.shared_generator(ys.device) if spread else None
        uniform = ys.new_full((n,), -math.log(N))
        x = log_w = totals = None
        ess = float(N)
        monitor = self.weight_monitor
        for t in progress_bar(range(T), progress=self.progress,
                              desc=type(self).__name__):
            x_prev, log_w_prev, ancestors, pending = x, log_w, None, None
            if t > 0 and ess < self.ess_threshold * N:
                if spread and not torch.is_grad_enabled():
                    # the surplus offspring move after propagation, in normalize's
                    # all-gather (rows moved that way carry no autograd graph)
                    x, ancestors, pending = ranks.resample_in_place(
                        x, log_w, self.resampling, shared, totals)
                elif spread:
                    x, ancestors = ranks.resample(x, log_w, self.resampling, shared, totals)
                else:
                    ancestors = self.resample(log_w.exp())
                    x = x[ancestors]
                log_w = uniform
            x, increment = self._move(x, t, ys[t], observed[t], n)
            step_moments = None
            if pending is not None:
                normalized = ranks.normalize_moving(increment - math.log(N), x, ancestors,
                                                    pending, moments)
                x, ancestors = normalized.rows
                increment = increment[:pending.own]  # this rank's own rows, for the monitor
            else:
                unnormalized = (uniform if log_w is None else log_w) + increment
                if spread:
                    normalized = ranks.normalize(unnormalized, x if moments else None)
            if spread:
                step_log_evidence, log_w, ess, totals, step_moments = normalized[:5]
            else:
                step_log_evidence = torch.logsumexp(unnormalized, 0)
                log_w = unnormalized - step_log_evidence
                weights = log_w.exp()
                ess = 1.0 / float(weights @ weights)
                if moments:
                    mean = weights @ x
                    step_moments = torch.cat([mean, weights @ (x - mean).square()])
            monitor(ess, increment, ys[t], t)
            yield FilterStep(t, ys[t], x_prev, log_w_prev, x, log_w, ancestors,
                             step_log_evidence, ess, step_moments)

    @torch.no_grad()
    def run(self, ys: Tensor) -> FilterResult:
        """Filter ``ys`` (``[T, obs_dim]``)."""
        log_evidences, ess, resampled, moments = [], [], [], []
        pending: list[FilterStep] = []
        spread, n, first = self.local_share()
        # across ranks the moments ride in each step's normalizing all-gather; in one
        # process they are computed for blocks of steps at once: one batched product
        # instead of several small operations per step (which dominate at N ~ 1000)
        block = max(1, min(64, 2**22 // (n * self.ssm.state_dim)))
        history: dict[str, list[Tensor]] = {"particles": [], "log_weights": [], "ancestors": []}
        for step in self.steps(ys, moments=spread):
            if spread:
                moments.append(step.moments.unsqueeze(0))
            else:
                pending.append(step)
                if len(pending) == block:
                    moments.append(_weighted_moments(pending))
                    pending = []
            log_evidences.append(step.log_evidence)
            ess.append(step.ess)
            resampled.append(step.ancestors is not None)
            if self.keep_history:
                history["particles"].append(step.particles)
                history["log_weights"].append(step.log_weights)
                history["ancestors"].append(
                    step.ancestors if step.ancestors is not None
                    else torch.arange(first, first + n, device=step.particles.device)
                )
        if pending:
            moments.append(_weighted_moments(pending))
        mean, var = torch.cat(moments).chunk(2, -1)
        if spread:  # the ranks' summed [E[x], E[x²]], accumulated in float64
            var = (var - mean.square()).clamp_min(0)
        mean, var = mean.to(step.particles.dtype), var.to(step.particles.dtype)
        return FilterResult(
            log_evidence=torch.stack(log_evidences).sum(),
            filter_mean=mean,
            filter_var=var,
            ess=torch.tensor(ess, dtype=mean.dtype),
            resampled=torch.tensor(resampled),
            particles=step.particles,
            log_weights=step.log_weights,
            history={k: torch.stack(v) for k, v in history.items()} if self.keep_history else {},
        )
