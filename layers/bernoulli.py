"""Bernoulli layers shared by sigmoid belief nets and their recognition networks."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
from torch import Tensor
from torch.nn import functional as F


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    layers = tuple(int(n) for n in layers)
    if len(layers) < 2 or min(layers) < 1:
        raise ValueError(f"layers must list at least two positive widths (data first), "
                         f"got {layers}")
    return layers


def latent_site(level: int) -> str:
    """The site name of latent layer ``level`` (1 is next to the data)."""
    return f"z_{level}"


def bernoulli_log_prob(logits: Tensor, value: Tensor) -> Tensor:
    """``log Bernoulli(value; logits)`` summed over the last dimension."""
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


def bernoulli_site(logits: Tensor) -> dist.TorchDistribution:
    # Values are checked once per fit; the per-step argument check costs ~10% here.
    return dist.Bernoulli(logits=logits, validate_args=False).to_event(1)
