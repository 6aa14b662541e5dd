"""Targets with known answers for the SG-MCMC tests."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule


class GaussianMean(PyroModule):
    """θ ~ N(0, s0² I), x_n ~ N(θ, Σ) for n in a subsampled plate: a Gaussian posterior
    with precision Λ = I/s0² + N Σ⁻¹ and mean Λ⁻¹ N Σ⁻¹ x̄."""

    def __init__(self, data: torch.Tensor, likelihood_cov: torch.Tensor, prior_scale: float,
                 subsample_size: int):
        super().__init__()
        self.data, self.cov, self.prior_scale = data, likelihood_cov, prior_scale
        self.subsample_size = subsample_size
        # x ~ N(θ, LLᵀ) has log density -|L⁻¹x - L⁻¹θ|²/2 + const: whitening the data once
        # keeps the Cholesky factor and torch's shape checks out of every update
        cholesky = torch.linalg.cholesky(likelihood_cov)
        self.whitener = torch.linalg.inv(cholesky)
        self.white_data = data @ self.whitener.T
        d = data.shape[1]
        self.log_normalizer = 0.5 * d * math.log(2 * math.pi) + cholesky.diagonal().log().sum()

    def forward(self):
        d = self.data.shape[1]
        theta = pyro.sample("theta", dist.Normal(torch.zeros(d), self.prior_scale).to_event(1))
        with pyro.plate("data", len(self.data), subsample_size=self.subsample_size) as idx:
            pyro.sample("obs", dist.MultivariateNormal(theta, self.cov), obs=self.data[idx])

    def minibatch_log_joint(self, values):
        """The density protocol: the traced program's scaled log joint, same draws."""
        theta = values["theta"]
        n = len(self.data)
        idx = torch.randperm(n)[: self.subsample_size].clone()
        d = theta.shape[-1]
        prior = -0.5 * (theta / self.prior_scale).pow(2).sum() - d * (
            math.log(self.prior_scale) + 0.5 * math.log(2 * math.pi))
        residual = self.white_data[idx] - self.whitener @ theta
        lik = -0.5 * residual.pow(2).sum() - len(idx) * self.log_normalizer
        return prior + n / self.subsample_size * lik

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, d = self.data.shape
        lik_precision = torch.linalg.inv(self.cov)
        precision = torch.eye(d) / self.prior_scale**2 + n * lik_precision
        cov = torch.linalg.inv(precision)
        return cov @ (n * lik_precision @ self.data.mean(0)), cov


def gaussian_target(dim: int, correlation: float, seed: int = 0) -> GaussianMean:
    """A correlated posterior: equicorrelated likelihood covariance, N = 50, B = 10."""
    g = torch.Generator().manual_seed(seed)
    cov = (1 - correlation) * torch.eye(dim) + correlation * torch.ones(dim, dim)
    data = torch.randn(50, dim, generator=g) @ torch.linalg.cholesky(cov).T + 1.0
    return GaussianMean(data, cov, prior_scale=10.0, subsample_size=10)


MODES = torch.stack(torch.meshgrid(torch.arange(-4.0, 5.0, 2.0), torch.arange(-4.0, 5.0, 2.0),
                                   indexing="ij"), -1).reshape(-1, 2)


class TwentyFiveGaussians(PyroModule):
    """A mixture of 25 Gaussians at {-4, -2, 0, 2, 4}², covariance 0.03 I (Zhang et al.
    2020, section 5.1). Implements the density protocol, so the test runs fast."""

    variance = 0.03

    def forward(self):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 100.0).to_event(1))
        pyro.factor("mixture", self.log_density(theta))

    def log_density(self, theta: torch.Tensor) -> torch.Tensor:
        sq = (theta - MODES).pow(2).sum(-1)
        return torch.logsumexp(-sq / (2 * self.variance), 0) - math.log(25 * 2 * math.pi
                                                                         * self.variance)

    def minibatch_log_joint(self, values):
        theta = values["theta"]
        prior = -0.5 * (theta / 100.0).pow(2).sum() - 2 * math.log(100.0 * math.sqrt(2 * math.pi))
        return prior + self.log_density(theta)
