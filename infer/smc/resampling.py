"""Resampling schemes: ancestor indices ``[N]`` from normalized weights ``[N]``.

All four are unbiased (``E[#copies of i] = N W_i``) and vectorized over particles
(Douc, Cappé & Moulines 2005 compare them; systematic is the usual default).
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalized_cdf(weights: Tensor) -> Tensor:
    """``C_j = Σ_{i <= j} W_i / Σ_i W_i`` in float64 ``[N]``, whatever the weights' dtype
    (float32 partial sums drift by more than ``1 / N`` at a million particles)."""
    cumulative = torch.cumsum(weights, 0, dtype=torch.float64)
    return cumulative.div_(cumulative[-1].clone())


def ancestors_from_counts_below(below: Tensor, num: int) -> Tensor:
    """The inverse CDF without a search: ancestor indices ``[num]`` (non-decreasing)
    from ``below[j]``, the number of the ``num`` sorted points ``<= C_j`` (``[n]``,
    non-decreasing, ``below[-1] = num``). Particle ``j`` gets the points from
    ``below[j - 1]`` to ``below[j] - 1``: a scatter and a cumulative sum, ``O(n + num)``
    where ``searchsorted`` costs ``O(num log n)`` in scattered memory accesses.

    Example:
        >>> ancestors_from_counts_below(torch.tensor([0, 3, 3, 4]), 4)
        tensor([1, 1, 1, 3])
    """
    # particle j > 0 starts at below[j - 1]; particle 0's start (0) is the -1 left out
    starts = below[:-1]
    marks = below.new_zeros(num + 1).index_add_(0, starts, below.new_ones(1).expand_as(starts))
    return marks[:num].cumsum(0)


def multinomial(weights: Tensor, num: int | None = None) -> Tensor:
    """Independent draws from the categorical distribution of ``weights``."""
    num = num or weights.shape[0]
    return torch.multinomial(weights, num, replacement=True)


def stratified(weights: Tensor, num: int | None = None) -> Tensor:
    """One uniform ``U_k`` in each stratum ``[k/N, (k+1)/N)``: the points
    ``(k + U_k) / N``. The points at or below ``c`` are the ``floor(N c)`` strata below
    ``c`` and the one it falls in if its point does, so each ``C_j`` gives its count
    directly (:func:`ancestors_from_counts_below`)."""
    num = num or weights.shape[0]
    offsets = torch.rand(num, dtype=torch.float64, device=weights.device)
    scaled = normalized_cdf(weights) * num
    strata = scaled.floor().clamp_(0, num).long()
    inside = offsets[strata.clamp(max=num - 1)] <= scaled - strata
    below = (strata + (inside & (strata < num))).clamp_(max=num)
    below[-1] = num
    return ancestors_from_counts_below(below, num)


def grid_counts_below(weights: Tensor, num: int, u: float | Tensor, lo: float = 0.0,
                      hi: float = 1.0, first: int = 0, count: int | None = None) -> Tensor:
    """How many of the grid points ``(k + u) / num``, ``k = first, ..., first + count -
    1``, lie at or below each ``C_j = lo + (hi - lo) S_j / S_n`` (``S`` the float64
    partial sums of ``weights`` ``[n]``): ``floor(num C_j - u) + 1 - first`` clamped to
    ``[0, count]``, ``[n]`` long, the last ``count`` (``count`` defaults to ``num``).

    One cumulative sum and one in-place multiply-add over the sums: at a million
    particles each pass over memory costs as much as the arithmetic.

    Example:
        >>> grid_counts_below(torch.tensor([0.1, 0.4, 0.5]), 4, 0.5).tolist()
        [0, 2, 4]
    """
    count = num if count is None else count
    cumulative = torch.cumsum(weights, 0, dtype=torch.float64)
    scale = num * (hi - lo) / cumulative[-1]  # a 0-dim tensor: no host sync on a GPU
    # after the clamp the values are >= 0, where truncation (.long()) is the floor
    below = cumulative.mul_(scale).add_(num * lo - u + 1 - first).clamp_(0, count).long()
    below[-1] = count
    return below


def systematic(weights: Tensor, num: int | None = None) -> Tensor:
    """One uniform ``u`` shifted over the grid: the points ``(k + u) / N``, of which
    ``floor(N C_j - u) + 1`` lie at or below ``C_j`` (:func:`grid_counts_below`,
    :func:`ancestors_from_counts_below`)."""
    num = num or weights.shape[0]
    offset = torch.rand((), dtype=torch.float64, device=weights.device)
    return ancestors_from_counts_below(grid_counts_below(weights, num, offset), num)


def residual(weights: Tensor, num: int | None = None) -> Tensor:
    """``floor(N W_i)`` copies of each particle, the rest drawn multinomially."""
    num = num or weights.shape[0]
    expected = num * weights / weights.sum()
    copies = expected.floor().long()
    indices = torch.repeat_interleave(torch.arange(weights.shape[0], device=weights.device),
                                      copies)
    remaining = num - indices.shape[0]
    if remaining > 0:
        rest = expected - copies
        indices = torch.cat([indices, torch.multinomial(rest, remaining, replacement=True)])
    return indices


SCHEMES = {"multinomial": multinomial, "stratified": stratified, "systematic": systematic,
           "residual": residual}


def resampler(name: str):
    if name not in SCHEMES:
        raise ValueError(f"resampling must be one of {sorted(SCHEMES)}, got {name!r}")
    return SCHEMES[name]
