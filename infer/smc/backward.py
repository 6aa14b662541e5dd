"""Backward kernels: draw an index ``j`` at time ``t - 1`` for a particle ``x`` at ``t``
with probability proportional to ``W_{t-1}^j q_t(x | x_{t-1}^j)``.

* :func:`exact_backward` computes the ``[M, N]`` logits (O(N) per draw), in chunks so
  that memory stays bounded.
* :func:`rejection_backward` proposes ``j ~ W_{t-1}`` and accepts with probability
  ``q_t(x | x_{t-1}^j) / exp(bound)``, where ``bound`` is the model's
  ``transition_log_bound(t)``: O(1) expected cost per draw when the bound is tight.
  Draws still pending after ``max_trials`` proposals are made exactly: the hybrid of
  Dau & Chopin (2022), which keeps the cost bounded when acceptance is rare. Proposals
  are vectorized over the pending draws in rounds of doubling size, so the whole step
  takes O(log N) rounds. With 10 single-proposal rounds instead, 20% of the draws were
  still pending on stochastic volatility and N = 10⁴ took 1.8 s per step.

Both take optional leading batch dimensions (independent particle systems, e.g. the
chains of particle Gibbs): ``previous [*B, N, d]``, ``previous_log_weights [*B, N]``,
``x [*B, M, d]`` give indices ``[*B, M]`` into each system's own particles.

**Checked bounds.** A bound that is not an upper bound biases the accept-reject draws
without any visible sign. :func:`rejection_backward` compares every density it computes
with the bound; when one exceeds it, that step is redrawn with the exact kernel and the
excess is reported (:class:`BackwardKernel` warns once and records every violation).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from ..checks import user_stacklevel

_MAX_ELEMENTS = 2**24


class BoundViolationError(Exception):
    """A transition log-density above ``transition_log_bound(t)``."""

    def __init__(self, t: int, bound: float, density: float) -> None:
        super().__init__(f"at t={t} a log transition density {density:.4g} exceeds "
                         f"transition_log_bound(t) = {bound:.4g}")
        self.t, self.bound, self.density = t, bound, density


def _flatten(previous: Tensor, previous_log_weights: Tensor, x: Tensor):
    """Batch dims ``B`` folded: previous ``[B*N, d]``, log weights ``[B, N]``, targets
    ``[B*M, d]`` and each target's batch index ``[B*M]``."""
    batch = previous.shape[:-2]
    N, M, d = previous.shape[-2], x.shape[-2], previous.shape[-1]
    if x.shape[:-2] != batch or previous_log_weights.shape != batch + (N,):
        raise ValueError(f"backward kernel: previous {tuple(previous.shape)}, log weights "
                         f"{tuple(previous_log_weights.shape)} and targets {tuple(x.shape)} "
                         "must share their batch dimensions")
    B = batch.numel()
    owner = torch.arange(B, device=x.device).repeat_interleave(M)
    return (previous.reshape(B * N, d), previous_log_weights.reshape(B, N),
            x.reshape(B * M, d), owner, batch, N, M)


def exact_backward(ssm: StateSpaceModel, previous: Tensor, previous_log_weights: Tensor,
                   x: Tensor, t: int, bound: Tensor | None = None,
                   violations: list[tuple[int, float]] | None = None) -> Tensor:
    """Indices ``[*B, M]`` into ``previous`` (``[*B, N, d]``) for targets ``x``
    (``[*B, M, d]``), drawn from the exact backward kernel.

    With ``bound`` and ``violations``, the densities are compared with the bound on the
    way and ``(t, excess)`` is appended when one exceeds it (the draws are exact
    whatever the bound).

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> previous = torch.randn(4, 1)
        >>> log_w = torch.log_softmax(torch.randn(4), 0)
        >>> exact_backward(ssm, previous, log_w, torch.randn(7, 1), t=1).shape
        torch.Size([7])
    """
    if previous.dim() > 2:
        return _batched_exact(ssm, previous, previous_log_weights, x, t, bound, violations)
    chunk = max(1, _MAX_ELEMENTS // max(previous.shape[0], 1))
    indices = []
    for part in x.split(chunk):
        log_q = ssm.transition_log_prob(previous.unsqueeze(0), part.unsqueeze(1), t)  # [m, N]
        _note_excess(log_q, bound, t, violations)
        indices.append(_inverse_cdf_draw(previous_log_weights + log_q))
    return torch.cat(indices)


def _exceeds(log_q: Tensor, bound: Tensor | float) -> float | None:
    """The excess of ``max log_q`` over ``bound`` (beyond rounding), or None."""
    bound = float(bound)
    top = float(log_q.max())
    if top > bound + 1e-5 * max(1.0, abs(bound)):
        return top - bound
    return None


def _note_excess(log_q: Tensor, bound: Tensor | None, t: int,
                 violations: list[tuple[int, float]] | None) -> None:
    if bound is not None and violations is not None:
        excess = _exceeds(log_q, bound)
        if excess is not None:
            violations.append((t, excess))


def _batched_exact(ssm, previous, previous_log_weights, x, t, bound=None,
                   violations=None) -> Tensor:
    """``[*B, M]``: logits ``[*B, M, N]`` in chunks of the targets."""
    N, M = previous.shape[-2], x.shape[-2]
    chunk = max(1, _MAX_ELEMENTS // max(previous[..., 0].numel(), 1))
    indices = []
    for start in range(0, M, chunk):
        part = x[..., start:start + chunk, :]
        log_q = ssm.transition_log_prob(previous.unsqueeze(-3), part.unsqueeze(-2), t)
        _note_excess(log_q, bound, t, violations)
        flat = _inverse_cdf_draw((previous_log_weights.unsqueeze(-2) + log_q).reshape(-1, N))
        indices.append(flat.reshape(part.shape[:-1]))
    return torch.cat(indices, -1) if len(indices) > 1 else indices[0].reshape(x.shape[:-2] + (M,))


def _inverse_cdf_draw(logits: Tensor) -> Tensor:
    """One categorical draw per row of ``logits`` ``[m, N]``; cheaper than
    ``Categorical``'s normalization and ``multinomial``."""
    cumulative = (logits - logits.max(-1, keepdim=True).values).exp_().cumsum_(-1)
    uniform = torch.rand(logits.shape[0], 1, dtype=cumulative.dtype, device=logits.device)
    index = torch.searchsorted(cumulative, uniform * cumulative[:, -1:])
    return index.squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def rejection_backward(ssm: StateSpaceModel, previous: Tensor, previous_log_weights: Tensor,
                       x: Tensor, t: int, max_trials: int | None = None,
                       exact_work: int = 2**16, check_bound: bool = True,
                       violations: list[tuple[int, float]] | None = None) -> Tensor:
    """As :func:`exact_backward`, by accept-reject with an exact fallback.

    Each round proposes ``trials`` indices ``j ~ W`` for every pending target at once
    and keeps the first accepted one: the first success of a sequence of i.i.d. trials
    is an exact draw, so a round of ``trials`` proposals equals that many sequential
    ones. ``trials`` doubles every round, so a target with acceptance probability ``p``
    costs about ``2 / p`` proposals in ``O(log(1 / p))`` rounds. A target still pending
    after ``max_trials`` proposals is drawn exactly, as are all pending targets once that
    is cheap (``pending · N <= exact_work``). Dau & Chopin cap the trials at ``N``; the
    default here is ``N / 4`` because a vectorized proposal costs about as much as one
    term of the exact kernel (at N = 10⁵ on stochastic volatility: 0.33 s per step with
    ``N``, see ``bench/smc.py`` for the default).

    With ``check_bound`` (the default) every computed density is compared with the
    bound: the targets drawn exactly are exact anyway, and an excess among them is
    appended to ``violations``; an excess among the accept-reject proposals raises.

    Raises:
        BoundViolationError: when an accept-reject proposal's density exceeds the bound;
            :class:`BackwardKernel` catches it and redraws the step exactly.
    """
    bound = torch.as_tensor(ssm.transition_log_bound(t), dtype=x.dtype,
                            device=x.device).detach()
    N = previous.shape[-2]
    if x[..., 0].numel() * N <= exact_work:  # cheap enough to draw every target exactly
        return exact_backward(ssm, previous, previous_log_weights, x, t,
                              bound if check_bound else None, violations)
    prev, log_w, targets, owner, batch, N, M = _flatten(previous, previous_log_weights, x)
    max_trials = max(1, N // 4) if max_trials is None else max_trials
    # one increasing sequence for all systems: system b's normalized CDF shifted by b
    cumulative = log_w.exp().cumsum(-1)
    cumulative = (cumulative / cumulative[:, -1:]).clamp_(max=1.0)
    if batch:
        cumulative = cumulative + torch.arange(cumulative.shape[0], device=x.device,
                                               dtype=x.dtype).unsqueeze(-1)
    cumulative = cumulative.flatten()
    total = previous_log_weights[..., 0].numel() * N
    result = torch.empty(targets.shape[0], dtype=torch.long, device=x.device)
    pending = torch.arange(targets.shape[0], device=x.device)
    trials, spent = 1, 0
    while pending.numel() * N > exact_work and spent < max_trials:
        trials = max(1, min(trials, max_trials - spent, _MAX_ELEMENTS // pending.numel()))
        uniform = torch.rand(pending.numel(), trials, dtype=x.dtype, device=x.device)
        if batch:
            uniform = uniform + owner[pending].unsqueeze(-1).to(x.dtype)
        proposals = torch.searchsorted(cumulative, uniform).clamp_(max=total - 1)
        log_density = ssm.transition_log_prob(prev[proposals], targets[pending].unsqueeze(1), t)
        if check_bound:
            excess = _exceeds(log_density, bound)
            if excess is not None:
                raise BoundViolationError(t, float(bound), float(bound) + excess)
        accept = torch.rand_like(log_density).log_() < log_density - bound
        accepted = accept.any(1)
        first = accept[accepted].to(torch.uint8).argmax(1)
        result[pending[accepted]] = proposals[accepted].gather(1, first[:, None]).squeeze(1)
        pending = pending[~accepted]
        spent += trials
        trials *= 2
    if batch:
        result = (result - owner * N).reshape(batch + (M,))  # indices within each system
    checked = bound if check_bound else None
    if pending.numel():
        if not batch:
            result[pending] = exact_backward(ssm, previous, previous_log_weights, x[pending], t,
                                             checked, violations)
        else:  # systems with pending targets: redraw those exactly
            flat = result.reshape(-1)
            rows = owner[pending]
            prev_rows = previous.reshape(-1, N, previous.shape[-1])[rows]
            w_rows = log_w[rows]
            drawn = _batched_exact(ssm, prev_rows, w_rows, targets[pending].unsqueeze(1), t,
                                   checked, violations)
            flat[pending] = drawn.squeeze(-1)
            result = flat.reshape(batch + (M,))
    return result


class BackwardKernel:
    """``kernel(previous, previous_log_weights, x, t) -> indices``: the exact or the
    accept-reject kernel for one model, with the bound checked.

    Attributes:
        method: ``"exact"`` or ``"rejection"``.
        bound_violations: ``(t, excess)`` for every step at which a computed log
            transition density exceeded ``transition_log_bound(t)`` by ``excess`` nats;
            those steps were drawn with the exact kernel. The first one warns.
        check_bound: compare the densities with the bound (on by default; turning it
            off trusts the bound, as ``bench/smc.py`` does to time the check).
    """

    def __init__(self, ssm: StateSpaceModel, method: str, max_trials: int | None = None
                 ) -> None:
        self.ssm, self.method, self.max_trials = ssm, method, max_trials
        self.bound_violations: list[tuple[int, float]] = []
        self.check_bound = True

    @torch.no_grad()  # indices only: no graph, even inside score ascent's objective
    def __call__(self, previous: Tensor, previous_log_weights: Tensor, x: Tensor,
                 t: int) -> Tensor:
        if self.method == "exact":
            return exact_backward(self.ssm, previous, previous_log_weights, x, t)
        found: list[tuple[int, float]] = []
        try:
            indices = rejection_backward(self.ssm, previous, previous_log_weights, x, t,
                                         self.max_trials, check_bound=self.check_bound,
                                         violations=found)
        except BoundViolationError as violation:
            found.append((t, violation.density - violation.bound))
            indices = exact_backward(self.ssm, previous, previous_log_weights, x, t)
        if found:
            excess = max(e for _, e in found)
            if not self.bound_violations:
                warnings.warn(
                    f"{type(self.ssm).__name__}.transition_log_bound({t}) is not an upper "
                    f"bound: a log transition density exceeds it by {excess:.3g} nats at "
                    f"time step {t}. Accept-reject backward draws would be biased; steps "
                    "where this is seen use the exact kernel (see result.bound_violations). "
                    "Fix the bound, or pass backward='exact'.", RuntimeWarning,
                    stacklevel=user_stacklevel())
            self.bound_violations.append((t, excess))
        return indices


def backward_sampler(ssm: StateSpaceModel, method: str = "auto",
                     max_trials: int | None = None, num_particles: int | None = None
                     ) -> BackwardKernel:
    """The :class:`BackwardKernel` for ``method`` in ``"auto"`` (rejection when the
    model declares ``transition_log_bound``), ``"exact"`` or ``"rejection"``.

    ``"auto"`` without a bound warns once when ``num_particles >= 2000``: the exact
    kernel costs O(N²) per step."""
    has_bound = callable(getattr(ssm, "transition_log_bound", None))
    if method not in ("auto", "exact", "rejection"):
        raise ValueError(f"backward must be 'auto', 'exact' or 'rejection', got {method!r}")
    if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int)
                                   or max_trials < 1):
        raise ValueError(f"max_trials must be an int >= 1 or None, got {max_trials!r}")
    if method == "rejection" and not has_bound:
        raise ValueError("backward='rejection' needs the model's transition_log_bound(t)")
    if method == "auto" and not has_bound and num_particles is not None \
            and num_particles >= 2000:
        warnings.warn(
            f"{type(ssm).__name__} declares no transition_log_bound(t), so backward='auto' "
            f"uses the exact backward kernel: O(N²) = {num_particles}² work per step. "
            "Declare the bound for O(N) rejection sampling, or pass backward='exact' to "
            "silence this warning.", UserWarning, stacklevel=user_stacklevel())
    if method == "exact" or (method == "auto" and not has_bound):
        return BackwardKernel(ssm, "exact")
    return BackwardKernel(ssm, "rejection", max_trials)
