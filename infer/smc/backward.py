"""Backward kernels: draw an index ``j`` at time ``t - 1`` for a particle ``x`` at ``t``
with probability proportional to ``W_{t-1}^j q_t(x | x_{t-1}^j)``.

* :func:`exact_backward` computes the ``[M, N]`` logits (O(N) per draw), in chunks so
  that memory stays bounded.
* :func:`rejection_backward` proposes ``j ~ W_{t-1}`` and accepts with probability
  ``q_t(x | x_{t-1}^j) / exp(bound)``, where ``bound`` is the model's
  ``transition_log_bound(t)``: O(1) expected cost per draw when the bound is tight.
  Draws still pending after ``max_trials`` rounds are made exactly: the hybrid of
  Dau & Chopin (2022), which keeps the cost bounded when acceptance is rare.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

_MAX_ELEMENTS = 2**24


def exact_backward(ssm: StateSpaceModel, previous: Tensor, previous_log_weights: Tensor,
                   x: Tensor, t: int) -> Tensor:
    """Indices ``[M]`` into ``previous`` (``[N, d]``) for targets ``x`` (``[M, d]``)."""
    chunk = max(1, _MAX_ELEMENTS // max(previous.shape[0], 1))
    indices = []
    for part in x.split(chunk):
        logits = previous_log_weights + ssm.transition_log_prob(  # [m, N]
            previous.unsqueeze(0), part.unsqueeze(1), t)
        indices.append(torch.distributions.Categorical(logits=logits).sample())
    return torch.cat(indices)


def rejection_backward(ssm: StateSpaceModel, previous: Tensor, previous_log_weights: Tensor,
                       x: Tensor, t: int, max_trials: int = 10) -> Tensor:
    """As :func:`exact_backward`, by accept-reject with an exact fallback."""
    bound = ssm.transition_log_bound(t)
    weights = previous_log_weights.exp()
    result = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    pending = torch.arange(x.shape[0], device=x.device)
    for _ in range(max_trials):
        if pending.numel() == 0:
            return result
        proposals = torch.multinomial(weights, pending.numel(), replacement=True)
        log_density = ssm.transition_log_prob(previous[proposals], x[pending], t)
        accept = torch.rand_like(log_density).log() < log_density - bound
        result[pending[accept]] = proposals[accept]
        pending = pending[~accept]
    if pending.numel():
        result[pending] = exact_backward(ssm, previous, previous_log_weights, x[pending], t)
    return result


def backward_sampler(ssm: StateSpaceModel, method: str = "auto", max_trials: int = 10):
    """``(previous, previous_log_weights, x, t) -> indices`` for ``method`` in
    ``"auto"`` (rejection when the model declares ``transition_log_bound``),
    ``"exact"`` or ``"rejection"``."""
    has_bound = callable(getattr(ssm, "transition_log_bound", None))
    if method not in ("auto", "exact", "rejection"):
        raise ValueError(f"backward must be 'auto', 'exact' or 'rejection', got {method!r}")
    if method == "rejection" and not has_bound:
        raise ValueError("backward='rejection' needs the model's transition_log_bound(t)")
    if method == "exact" or (method == "auto" and not has_bound):
        return lambda prev, log_w, x, t: exact_backward(ssm, prev, log_w, x, t)
    return lambda prev, log_w, x, t: rejection_backward(ssm, prev, log_w, x, t, max_trials)
