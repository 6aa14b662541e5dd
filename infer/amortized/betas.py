"""How a multi-rate run draws its β (Bae et al. 2023): the distribution of ``log β``
over the range and stratified draws of a minibatch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def check_beta_distribution(distribution: Any) -> str | tuple[float, float]:
    """``"log_uniform"`` or a pair ``(a, b)`` of positive Kumaraswamy exponents."""
    if distribution == "log_uniform":
        return distribution
    if isinstance(distribution, str):
        raise ValueError("beta_distribution must be 'log_uniform' or a pair (a, b) of "
                         f"positive exponents, got {distribution!r}")
    try:
        a, b = (float(v) for v in distribution)
    except (TypeError, ValueError):
        raise TypeError("beta_distribution must be 'log_uniform' or a pair (a, b) of "
                        f"positive exponents, got {distribution!r}") from None
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"beta_distribution exponents must be positive, got {distribution!r}")
    return a, b


def beta_at(position: Tensor, low: float, high: float,
            distribution: str | tuple[float, float] = "log_uniform") -> Tensor:
    """β at ``position`` in ``[0, 1]`` of the quantile function of ``distribution``.

    ``"log_uniform"``: ``log β`` uniform on ``[log low, log high]`` (Bae et al. 2023,
    eq. 7). ``(a, b)``: the fraction ``t`` of the way up that interval follows the
    Kumaraswamy distribution (Kumaraswamy 1980), density ``a b t^(a-1) (1 - t^a)^(b-1)``
    and quantile ``(1 - (1 - v)^(1/b))^(1/a)``: ``a < 1`` puts more draws near ``low``,
    ``b < 1`` near ``high``, and ``(1, 1)`` is log-uniform.

    Example:
        >>> beta_at(torch.tensor([0.0, 0.5, 1.0]), 0.01, 100.0, (0.5, 1.0))  # t = v²
        tensor([1.0000e-02, 1.0000e-01, 1.0000e+02])
    """
    if distribution != "log_uniform":
        a, b = distribution
        position = (1 - (1 - position) ** (1 / b)) ** (1 / a)
    return torch.exp(math.log(low) + position * (math.log(high) - math.log(low)))


def sample_betas(low: float, high: float, shape: tuple[int, ...], like: Tensor,
                 stratified: bool = False,
                 distribution: str | tuple[float, float] = "log_uniform") -> Tensor:
    """β drawn from ``distribution`` on ``[low, high]`` (:func:`beta_at`), on
    ``like``'s device and dtype.

    ``stratified=True`` (one-dimensional ``shape = (B,)``): one draw in each of the
    ``B`` slices of equal probability, in random order, so that every minibatch covers
    the range evenly; each draw still follows ``distribution``.

    Example:
        >>> beta = sample_betas(0.01, 10.0, (4,), torch.zeros(()), stratified=True)
        >>> bool(((beta >= 0.01) & (beta <= 10.0)).all())
        True
    """
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    if stratified:
        n = u.shape[0]
        u = (torch.randperm(n, device=like.device).to(like.dtype) + u) / n
    return beta_at(u, low, high, distribution)
