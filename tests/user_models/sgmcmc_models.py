"""Pyro programs for SG-MCMC written from the public documentation alone (DESIGN.md and
the ``posterity.infer.sgmcmc`` docstrings): latent sites drawn with ``pyro.sample``,
data points in a plate that subsamples, observed sites with their own names. None of
them uses the built-in models, the built-in signature ``model(X, y, subsample=...)``
or a site named ``"obs"``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor


def regression(batch: dict[str, Tensor], subsample_size: int = 20) -> None:
    """Linear regression called as ``model(batch)`` with ``batch = {"inputs": [N, D],
    "targets": [N]}``; sites ``coef`` ``[D]``, ``intercept``, plate ``rows``, observed
    ``target``."""
    inputs, targets = batch["inputs"], batch["targets"]
    zero = inputs.new_zeros(())
    coef = pyro.sample("coef", dist.Normal(zero, 2.0).expand([inputs.shape[1]]).to_event(1))
    intercept = pyro.sample("intercept", dist.Normal(zero, 2.0))
    with pyro.plate("rows", inputs.shape[0], subsample_size=min(subsample_size,
                                                                 inputs.shape[0])) as idx:
        pyro.sample("target", dist.Normal(inputs[idx] @ coef + intercept, 0.5),
                    obs=targets[idx])


def regression_data(n: int = 100, dim: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, dim, generator=g, dtype=torch.float64)
    coef = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)
    targets = inputs @ coef + 0.3 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return {"inputs": inputs.to(dtype), "targets": targets.to(dtype)}


class Hierarchical:
    """Group means with a learned spread: ``mu ~ N(0, 5²)``, ``tau ~ LogNormal(0, 1)``
    (positive: sampled through a log transform), ``theta_j ~ N(mu, tau²)`` for ``J``
    groups, and ``score_n ~ N(theta_{group_n}, 1)`` in the subsampled plate
    ``students``. Called as ``model(scores, group)``."""

    def __init__(self, num_groups: int, subsample_size: int = 25) -> None:
        self.num_groups, self.subsample_size = num_groups, subsample_size

    def __call__(self, scores: Tensor, group: Tensor) -> None:
        zero = scores.new_zeros(())
        mu = pyro.sample("mu", dist.Normal(zero, 5.0))
        tau = pyro.sample("tau", dist.LogNormal(zero, 1.0))
        theta = pyro.sample("theta", dist.Normal(mu, tau).expand([self.num_groups]).to_event(1))
        with pyro.plate("students", scores.shape[0], subsample_size=self.subsample_size) as idx:
            pyro.sample("score", dist.Normal(theta[group[idx]], 1.0), obs=scores[idx])


def hierarchical_data(num_groups: int = 4, per_group: int = 30,
                      seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(num_groups).repeat_interleave(per_group)
    means = torch.linspace(-1.0, 2.0, num_groups)
    return means[group] + torch.randn(group.shape[0], generator=g), group


class SoftmaxClassifier:
    """Multinomial logistic regression, ``model(features, labels)``: weights ``W``
    ``[K, D]`` and ``b`` ``[K]``, observed ``label`` (integers in ``[0, K)``) in the
    subsampled plate ``examples``."""

    def __init__(self, num_features: int, num_classes: int, subsample_size: int = 30) -> None:
        self.num_features, self.num_classes = num_features, num_classes
        self.subsample_size = subsample_size

    def __call__(self, features: Tensor, labels: Tensor) -> None:
        zero = features.new_zeros(())
        W = pyro.sample("W", dist.Normal(zero, 1.0).expand([self.num_classes,  # noqa: N806
                                                             self.num_features]).to_event(2))
        b = pyro.sample("b", dist.Normal(zero, 1.0).expand([self.num_classes]).to_event(1))
        with pyro.plate("examples", features.shape[0],
                        subsample_size=self.subsample_size) as idx:
            pyro.sample("label", dist.Categorical(logits=features[idx] @ W.T + b),
                        obs=labels[idx])


def classification_data(n: int = 120, dim: int = 2, classes: int = 3,
                        seed: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = 2.0 * torch.randn(classes, dim, generator=g)
    return centers[labels] + torch.randn(n, dim, generator=g), labels


def broadcasting_regression(x: Tensor, y: Tensor) -> None:
    """A common mistake: the mean has shape ``[B, 1]`` (a column from a matrix
    product) while the targets have shape ``[B]``, so the likelihood would broadcast
    to ``[B, B]``."""
    w = pyro.sample("w", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=10) as idx:
        pyro.sample("y", dist.Normal(x[idx].unsqueeze(-1) * w, 1.0), obs=y[idx])
