"""Pyro programs written the way a user would, without posterity's density protocol."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from posterity.layers import BetaStandardizer, GatedMLP
from posterity.models import LinearGaussianVAE


class PosteriorProposal(PyroModule):
    """A diagonal guide for probabilistic PCA: the exact posterior mean shifted by
    ``shift`` and its marginal scales inflated by ``inflation``."""

    def __init__(self, model: LinearGaussianVAE, inflation: float = 1.5, shift: float = 0.0):
        super().__init__()
        self.model, self.inflation, self.shift = model, inflation, shift

    def params(self, x):
        posterior = self.model.exact_posterior(x)
        scale = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        return posterior.loc + self.shift * scale, self.inflation * scale

    def forward(self, x):
        loc, scale = self.params(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def second_moment_is_finite(model: LinearGaussianVAE, x, inflation: float, shift: float) -> bool:
    """Whether E_q[w^2] < inf: 2 Σ_p^{-1} - Σ_q^{-1} must be positive definite."""
    guide = PosteriorProposal(model, inflation, shift)
    posterior = model.exact_posterior(x[:1])
    _, scale = guide.params(x[:1])
    matrix = 2 * torch.linalg.inv(posterior.covariance_matrix[0]) - torch.diag(scale[0] ** -2)
    return bool((torch.linalg.eigvalsh(matrix) > 0).all())


class TwoLayerModel(PyroModule):
    """z2 ~ N(0, I), z1 | z2 ~ N(f(z2), 0.5), x | z1 ~ Bernoulli(g(z1))."""

    def __init__(self, x_dim: int = 12, z1_dim: int = 4, z2_dim: int = 2):
        super().__init__()
        self.z2_dim = z2_dim
        self.f = nn.Linear(z2_dim, z1_dim)
        self.g = nn.Sequential(nn.Linear(z1_dim, 16), nn.Tanh(), nn.Linear(16, x_dim))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample(
                "z2", dist.Normal(x.new_zeros(self.z2_dim), 1.0).to_event(1)
            )
            z1 = pyro.sample("z1", dist.Normal(self.f(z2), 0.5).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.g(z1)).to_event(1), obs=x)


class TwoLayerGuide(PyroModule):
    """q(z1 | x) q(z2 | z1), Gaussian, bottom-up."""

    def __init__(self, x_dim: int = 12, z1_dim: int = 4, z2_dim: int = 2):
        super().__init__()
        self.h = nn.Sequential(nn.Linear(x_dim, 16), nn.Tanh(), nn.Linear(16, 2 * z1_dim))
        self.k = nn.Linear(z1_dim, 2 * z2_dim)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.h(x).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))
            loc2, raw2 = self.k(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc2, nn.functional.softplus(raw2)).to_event(1))


class UserBeliefNet(PyroModule):
    """A one-hidden-layer sigmoid belief net as a user writes it: plain Pyro, no density
    protocol, Bernoulli logits straight out of nn.Linear."""

    def __init__(self, x_dim: int = 12, h_dim: int = 4):
        super().__init__()
        self.prior_logits = nn.Parameter(torch.zeros(h_dim))
        self.decoder = nn.Linear(h_dim, x_dim)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            h = pyro.sample("h", dist.Bernoulli(logits=self.prior_logits).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=x)


class UserRecognitionNet(PyroModule):
    def __init__(self, x_dim: int = 12, h_dim: int = 4):
        super().__init__()
        self.encoder = nn.Linear(x_dim, h_dim)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("h", dist.Bernoulli(logits=self.encoder(x)).to_event(1))


# --- a multi-rate pair (Bae et al. 2023) --------------------------------------------
class UserModel(PyroModule):
    """A multi-rate model written by hand, not a built-in: the older form of
    docs/families/amortized.md, with ``beta_range`` attributes, which the engine still
    reads (the page's own pair is run by ``test_multirate.py``)."""

    def __init__(self, beta_range=(0.01, 10.0), degree=1):
        super().__init__()
        self.beta_range = beta_range
        self.standardize = BetaStandardizer(beta_range)
        self.net = GatedMLP(2, (16,), 6, "softplus", rank=2, degree=degree)

    def forward(self, x, beta=None):
        u = self.standardize(torch.as_tensor(1.0 if beta is None else beta).to(x))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.net(z, u.expand(x.shape[:1])), 1.0).to_event(1),
                        obs=x)


class UserGuide(PyroModule):
    """The guide of :class:`UserModel`: mean and log σ from one gated network."""

    def __init__(self, beta_range=(0.01, 10.0), degree=1):
        super().__init__()
        self.beta_range = beta_range
        self.standardize = BetaStandardizer(beta_range)
        self.net = GatedMLP(6, (16,), 4, "two_sigmoid", rank=2, degree=degree)

    def forward(self, x, beta=None):
        u = self.standardize(torch.as_tensor(1.0 if beta is None else beta).to(x))
        loc, log_scale = self.net(x, u.expand(x.shape[:1])).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def two_direction_data(dtype: torch.dtype) -> torch.Tensor:
    """400 points in 6 dimensions with two directions of variance λ = 10 (9 signal + 1
    noise) and unit noise: the linear optimum keeps a direction iff λ > β, with rate
    ½ log(λ / β), so 4.6 nats at β = 0.1 and none at β = 10."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(400, 2, generator=generator, dtype=dtype)
    mixing = torch.randn(2, 6, generator=generator, dtype=dtype)
    mixing = 3 * mixing / mixing.norm(dim=1, keepdim=True)
    return z @ mixing + torch.randn(400, 6, generator=generator, dtype=dtype)
