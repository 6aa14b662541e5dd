"""Resampling schemes: ancestor indices ``[N]`` from normalized weights ``[N]``.

All four are unbiased (``E[#copies of i] = N W_i``) and vectorized over particles
(Douc, Cappé & Moulines 2005 compare them; systematic is the usual default).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _inverse_cdf(weights: Tensor, uniforms: Tensor) -> Tensor:
    cumulative = torch.cumsum(weights, 0)
    cumulative = cumulative / cumulative[-1]
    return torch.searchsorted(cumulative, uniforms).clamp(max=weights.shape[0] - 1)


def multinomial(weights: Tensor, num: int | None = None) -> Tensor:
    """Independent draws from the categorical distribution of ``weights``."""
    num = num or weights.shape[0]
    return torch.multinomial(weights, num, replacement=True)


def stratified(weights: Tensor, num: int | None = None) -> Tensor:
    """One uniform in each stratum ``[i/N, (i+1)/N)``."""
    num = num or weights.shape[0]
    offsets = torch.rand(num, dtype=weights.dtype, device=weights.device)
    grid = torch.arange(num, dtype=weights.dtype, device=weights.device)
    return _inverse_cdf(weights, (grid + offsets) / num)


def systematic(weights: Tensor, num: int | None = None) -> Tensor:
    """One uniform shifted over the grid ``i/N``."""
    num = num or weights.shape[0]
    offset = torch.rand((), dtype=weights.dtype, device=weights.device)
    grid = torch.arange(num, dtype=weights.dtype, device=weights.device)
    return _inverse_cdf(weights, (grid + offset) / num)


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
