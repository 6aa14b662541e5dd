"""The PaRIS smoother (Olsson & Westerborn, Bernoulli 2017, algorithm 2).

It estimates ``E[Σ_t h_t(x_{t-1}, x_t, y_t) | y_{0:T-1}]`` online. Each particle
``i`` at time ``t`` carries a statistic

    τ_t^i = (1/Ñ) Σ_{k=1}^{Ñ} [τ_{t-1}^{J_k^i} + h_t(x_{t-1}^{J_k^i}, x_t^i)],

with ``J_k^i`` drawn from the backward kernel ``∝ W_{t-1}^j q_t(x_t^i | x_{t-1}^j)``,
and the estimate is ``Σ_i W_{T-1}^i τ_{T-1}^i``. Memory is ``O(N · dim h)`` and does
not grow with ``T``; with the accept-reject backward kernel the cost is ``O(N Ñ)``
per step.

**Across ranks** (inside a process group, see :mod:`.filter`): each rank holds ``N / W``
particles and their statistics. At every step the previous cloud, its log-weights and
its statistics are all-gathered (``O(N (d + 1 + k))`` numbers), each rank draws the
backward indices of its own particles among the global previous cloud, and the
estimate is the global weighted sum: the same law as one process with the same ``N``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from .. import distributed
from ..checks import check_int
from . import across_ranks as ranks
from .backward import backward_sampler
from .filter import FilterStep, ParticleFilter

AdditiveFunctional = Callable[[Tensor | None, Tensor, Tensor, int], Tensor]


def evaluate_term(h: AdditiveFunctional, x_prev: Tensor | None, x: Tensor, y: Tensor,
                  t: int, check: bool = True) -> Tensor:
    """``h_t`` on a batch of particles ``x`` (``[M, d]``), as ``[M, k]``.

    With ``check``, ``h`` must return a tensor ``[M]`` or ``[M, k]`` with no NaN: a
    ``TypeError``/``ValueError`` names ``h`` and the time step otherwise."""
    value = h(x_prev, x, y, t)
    if not check:
        if value.dtype != x.dtype:
            value = value.to(x.dtype)
        return value.unsqueeze(-1) if value.dim() == 1 else value
    if not isinstance(value, Tensor):
        raise TypeError(f"h(x_prev, x, y, t) must return a Tensor [num_particles, k], got "
                        f"{type(value).__name__} at time step {t}")
    if value.is_complex():
        raise TypeError(f"h(x_prev, x, y, t) must return real values, got {value.dtype} at "
                        f"time step {t}")
    if not value.is_floating_point():  # indicators and counts are averaged as numbers
        value = value.to(x.dtype)
    returned = tuple(value.shape)
    if value.dim() == 1:
        value = value.unsqueeze(-1)
    if value.dim() != 2 or value.shape[0] != x.shape[0]:
        raise ValueError(f"h(x_prev, x, y, t) must return [num_particles, k] = "
                         f"[{x.shape[0]}, k] for x of shape {tuple(x.shape)}, got "
                         f"{returned} at time step {t}")
    if value.dtype != x.dtype:
        value = value.to(x.dtype)
    if torch.isnan(value).any():
        raise ValueError(f"h(x_prev, x, y, t) returned NaN at time step {t} (for "
                         f"{int(torch.isnan(value).any(-1).sum())} of {x.shape[0]} particles)")
    return value


def paris_update(step: FilterStep, statistics: Tensor | None, h: AdditiveFunctional,
                 backward, num_backward: int, check: bool = True,
                 across_ranks: bool = False) -> tuple[Tensor, Tensor | None]:
    """One PaRIS step: the new statistics ``[N, k]`` and the backward indices
    ``[N, Ñ]`` (``None`` at ``t = 0``).

    With ``across_ranks`` the step is this rank's share of a filter spread over the
    ranks: the previous cloud, its weights and ``statistics`` are gathered from every
    rank (differentiably for ``statistics``, see :func:`.across_ranks.gather_rows`), the
    returned statistics are this rank's ``[N / W, k]`` and the indices point into the
    global previous cloud."""
    if step.t == 0:
        return evaluate_term(h, None, step.particles, step.y, 0, check), None
    n = step.particles.shape[0]
    previous, previous_log_weights = step.previous, step.previous_log_weights
    if across_ranks:  # one all-gather, two when the statistics carry a gradient
        parts = [previous, previous_log_weights.unsqueeze(-1)]
        apart = statistics.requires_grad or statistics.dtype != previous.dtype
        packed = ranks.gather_rows(torch.cat(parts if apart else parts + [statistics], -1))
        d = previous.shape[-1]
        previous, previous_log_weights = packed[:, :d], packed[:, d].contiguous()
        statistics = ranks.gather_rows(statistics) if apart else packed[:, d + 1:]
    targets = step.particles.repeat_interleave(num_backward, 0)
    indices = backward(previous, previous_log_weights, targets, step.t)
    terms = statistics[indices] + evaluate_term(h, previous[indices], targets, step.y,
                                                step.t, check)
    return terms.reshape(n, num_backward, -1).mean(1), indices.reshape(n, num_backward)


@dataclass
class SmoothingResult:
    """``estimate``: ``E[Σ_t h_t | y]``, ``[k]``; ``log_evidence`` of the filter run;
    ``bound_violations``: ``(t, excess)`` where a transition density exceeded
    ``transition_log_bound(t)`` (those steps used the exact backward kernel)."""

    estimate: Tensor
    log_evidence: Tensor
    bound_violations: list[tuple[int, float]] = field(default_factory=list)

    def to_inference_data(self):
        """The estimate (dim ``functional``) and the log-evidence as ``InferenceData``."""
        import arviz as az
        import xarray as xr

        return az.InferenceData(smoothing=xr.Dataset(
            {"estimate": ("functional", self.estimate.detach().cpu().numpy())},
            attrs={"log_evidence": float(self.log_evidence),
                   "bound_violations": len(self.bound_violations)},
        ))


class PaRIS:
    """Particle-based, rapid incremental smoother.

    Args:
        ssm: the model.
        h: the additive term ``h(x_prev, x, y, t) -> [..., k]`` (``x_prev`` is None at
            ``t = 0``).
        num_particles: ``N >= 2``.
        num_backward: ``Ñ >= 1`` backward draws per particle (2 is the usual choice).
        backward: ``"auto"``, ``"exact"`` or ``"rejection"`` (see :mod:`.backward`).
        max_trials: proposals per accept-reject draw before the exact fallback.

    The other arguments are those of :class:`ParticleFilter`; ``ess_threshold`` defaults
    to 1 here: resampling at every step. Inside a process group the particles are
    spread over the ranks (``num_particles`` divisible by the number of processes) and
    the estimate and log-evidence are global, the same on every rank
    (``bound_violations`` are this rank's; ``across_ranks=False``: one smoother per
    rank).

    ``h`` is checked at every step: a value that is not ``[N, k]`` (or ``[N]``), or that
    holds NaN, raises an error naming ``h`` and the time step. The rejection backward
    kernel checks the model's bound against every density it computes (see
    :mod:`.backward`); violations are in ``result.bound_violations``.

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> ys = ssm.simulate(T=50).observations
        >>> est = PaRIS(ssm, lambda x_prev, x, y, t: x, num_particles=200,
        ...             progress=False).run(ys)
        >>> est.estimate.shape
        torch.Size([1])
    """

    def __init__(
        self,
        ssm: StateSpaceModel,
        h: AdditiveFunctional,
        num_particles: int = 1000,
        num_backward: int = 2,
        backward: str = "auto",
        max_trials: int | None = None,
        **filter_kwargs,
    ) -> None:
        if not callable(h):
            raise TypeError("h must be a callable h(x_prev, x, y, t)")
        self.h = h
        self.num_backward = check_int("num_backward", num_backward, 1)
        # resampling at every step (Olsson & Westerborn's setting) keeps every particle's
        # ancestor in the weighted cloud, so accept-reject backward draws rarely fail:
        # with adaptive resampling, N = 10⁵ ran 10× slower on stochastic volatility
        filter_kwargs.setdefault("ess_threshold", 1.0)
        self.filter = ParticleFilter(ssm, num_particles, **filter_kwargs)
        self.backward = backward_sampler(ssm, backward, max_trials, num_particles)

    @torch.no_grad()
    def run(self, ys: Tensor) -> SmoothingResult:
        """Smooth ``ys`` (``[T, obs_dim]``)."""
        statistics, log_evidence = None, 0.0
        violations = len(self.backward.bound_violations)
        spread = self.filter.local_share()[0]
        for step in self.filter.steps(ys):
            statistics, _ = paris_update(step, statistics, self.h, self.backward,
                                         self.num_backward, across_ranks=spread)
            log_evidence = log_evidence + step.log_evidence
        estimate = step.log_weights.exp() @ statistics
        if spread:
            estimate = distributed.all_reduce_sum(estimate)
        return SmoothingResult(estimate, log_evidence,
                               list(self.backward.bound_violations[violations:]))
