"""Variational autoencoders as Pyro programs (Kingma & Welling 2014).

Both models draw ``z ~ N(0, I)`` for each data point in ``pyro.plate("data")`` and
observe ``x`` given ``z``. The matching guides live in :mod:`posterity.guides`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.nn import functional as F

from posterity.layers.gated import (
    DEFAULT_BETA_EXTENSION,
    DEFAULT_BETA_RANGE,
    DEFAULT_RESPONSE_DEGREE,
    DEFAULT_RESPONSE_RANK,
    GatedMLP,
    MultiRateMixin,
    stagger_gates,
)
from posterity.layers.networks import mlp
from posterity.layers.plates import check_binary, check_matrix, check_width, data_plate

LIKELIHOODS = ("bernoulli", "gaussian")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return -0.5 * z.pow(2).sum(-1) - _HALF_LOG_2PI * z.shape[-1]


def standard_normal_prior(x: Tensor, z_dim: int) -> dist.TorchDistribution:
    """``N(0, I_{z_dim})`` as a distribution with event shape ``[z_dim]``, on ``x``'s
    device and dtype."""
    return dist.Normal(x.new_zeros(()), x.new_ones(())).expand([z_dim]).to_event(1)


class VAE(MultiRateMixin, PyroModule):
    """A VAE with an MLP decoder of any depth.

    ``p(z) = N(0, I)`` and ``p(x | z) = Bernoulli(logits=f(z))`` or
    ``N(f(z), diag(exp(2 s)))`` with a learned per-feature log scale ``s``.

    Args:
        x_dim: data width ``D``.
        z_dim: latent width.
        hidden: widths of the hidden layers of the encoder, from ``x`` to ``z``; the
            decoder mirrors them (so ``VAE`` and ``GaussianEncoder`` take the same tuple).
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        activation: hidden nonlinearity (``"tanh"``, ``"relu"``, ``"identity"``, ...).
        multi_rate: gate the decoder's input (per latent dimension), hidden and
            output layers by ``log β`` (Multi-Rate VAE, Bae et al. 2023; see
            :mod:`posterity.layers.gated` for the gate of each); the program then takes
            ``beta=`` (``None``: β = 1).
        beta_range: the β to serve (``beta=`` outside it is extrapolated).
        beta_extension: decades of β below ``beta_range`` that training also draws
            (``AmortizedVI`` takes it from here); ``log β`` is standardized over
            the whole training range (:class:`~posterity.layers.gated.BetaStandardizer`).
        response_rank: the rank of each gated layer's β-dependent weights
            (:class:`~posterity.layers.gated.GatedLinear`; 0: gates only).
        response_degree: the degree in standardized ``log β`` of those weights (1:
            linear; 2: a second block of that rank with coefficient ``u**2 - 1``,
            slightly better after long runs but less stable at larger learning rates;
            see :mod:`posterity.layers.gated`).
        scale: a fixed Gaussian observation scale (default: learned per feature).

    Example:
        >>> model = VAE(x_dim=784, z_dim=50, hidden=(200, 200))
        >>> x = torch.bernoulli(torch.full((3, 784), 0.5))
        >>> trace = pyro.poutine.trace(model).get_trace(x)
        >>> trace.nodes["z"]["value"].shape
        torch.Size([3, 50])
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (200, 200),
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        multi_rate: bool = False,
        beta_range: tuple[float, float] = DEFAULT_BETA_RANGE,
        beta_extension: float = DEFAULT_BETA_EXTENSION,
        scale: float | None = None,
        response_rank: int = DEFAULT_RESPONSE_RANK,
        response_degree: int = DEFAULT_RESPONSE_DEGREE,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.x_dim, self.z_dim, self.likelihood = x_dim, z_dim, likelihood
        self._init_multi_rate(multi_rate, beta_range, beta_extension)
        layers = tuple(reversed(tuple(hidden)))
        if self.multi_rate:
            self.decoder = GatedMLP(z_dim, layers, x_dim, "softplus", activation,
                                    gate_output="softplus", input_gate="two_sigmoid",
                                    rank=response_rank, degree=response_degree)
            stagger_gates(self.decoder.input_gate)
        else:
            self.decoder = mlp(z_dim, layers, x_dim, activation)
        if likelihood == "gaussian":
            log_scale = torch.zeros(x_dim) + (0.0 if scale is None else math.log(scale))
            if scale is None:
                self.log_scale = nn.Parameter(log_scale)
            else:
                self.register_buffer("log_scale", log_scale)

    def decoder_output(self, z: Tensor, beta=None) -> Tensor:
        """Logits (Bernoulli) or means (Gaussian) of ``p(x | z)`` at ``beta``."""
        u = self._standardized(beta, z)
        return self.decoder(z) if u is None else self.decoder(z, u)

    def observation_dist(self, z: Tensor, beta=None) -> dist.TorchDistribution:
        """``p(x | z)`` with event shape ``[x_dim]``, batched like ``z[..., 0]``."""
        out = self.decoder_output(z, beta)
        if self.likelihood == "bernoulli":
            # Data are checked once per fit by validate_data, not at every step.
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, self.log_scale.exp()).to_event(1)

    def log_joint(
        self, x: Tensor, latents: dict[str, Tensor], num_data: int | None = None, beta=None
    ) -> tuple[Tensor, Tensor]:
        """``(log p(x | z), log p(z))``, each ``[K, B]`` (density protocol)."""
        z = latents["z"]
        out = self.decoder_output(z, beta)
        if self.likelihood == "bernoulli":
            log_lik = -F.binary_cross_entropy_with_logits(
                out, x.expand_as(out), reduction="none"
            ).sum(-1)
        else:
            log_lik = dist.Normal(out, self.log_scale.exp()).log_prob(x).sum(-1)
        return log_lik, standard_normal_log_prob(z)

    def prior_distributions(self, x: Tensor, num_data: int | None = None, beta=None
                            ) -> dict[str, dist.TorchDistribution]:
        """``{"z": p(z)}``, the standard normal prior (closed-form KL protocol)."""
        return {"z": standard_normal_prior(x, self.z_dim)}

    def forward(self, x: Tensor, num_data: int | None = None, beta=None) -> None:
        check_width(x, self.x_dim, "x")
        with data_plate(x, num_data):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.z_dim])
            z = pyro.sample("z", prior.to_event(1))
            pyro.sample("x", self.observation_dist(z, beta), obs=x)

    def validate_data(self, x: Tensor, name: str = "data") -> None:
        check_matrix(x, self.x_dim, name)
        if self.likelihood == "bernoulli":
            check_binary(x, name)

    @torch.no_grad()
    def decode(self, z: Tensor, beta=None) -> Tensor:
        """The mean of ``p(x | z)``: pixel probabilities or Gaussian means."""
        out = self.decoder_output(z, beta)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    @torch.no_grad()
    def sample(self, num_samples: int, beta=None) -> Tensor:
        """Mean images ``E[x | z]`` for ``z ~ p(z)``, shape ``[num_samples, x_dim]``."""
        ref = next(self.parameters())
        z = torch.randn(num_samples, self.z_dim, device=ref.device, dtype=ref.dtype)
        return self.decode(z, beta)


class LinearGaussianVAE(PyroModule):
    """Probabilistic PCA (Tipping & Bishop 1999) as a VAE with an exact likelihood.

    ``z ~ N(0, I_d)``, ``x | z ~ N(W z + b, sigma^2 I_D)``, so that
    ``log p(x) = log N(x; b, W W^T + sigma^2 I)`` and the posterior is
    ``N(M^{-1} W^T (x - b), sigma^2 M^{-1})`` with ``M = W^T W + sigma^2 I``.

    Args:
        x_dim: ``D``.
        z_dim: ``d``.
        noise_scale: initial ``sigma``.
        learn_noise: whether ``sigma`` is a learned parameter.
    """

    def __init__(
        self, x_dim: int, z_dim: int, noise_scale: float = 1.0, learn_noise: bool = True
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim) / math.sqrt(z_dim))
        self.bias = nn.Parameter(torch.zeros(x_dim))
        log_noise = torch.tensor(math.log(noise_scale))
        if learn_noise:
            self.log_noise_scale = nn.Parameter(log_noise)
        else:
            self.register_buffer("log_noise_scale", log_noise)

    @property
    def noise_scale(self) -> Tensor:
        return self.log_noise_scale.exp()

    def forward(self, x: Tensor, num_data: int | None = None) -> None:
        check_width(x, self.x_dim, "x")
        with data_plate(x, num_data):
            prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([self.z_dim])
            z = pyro.sample("z", prior.to_event(1))
            loc = F.linear(z, self.weight, self.bias)
            pyro.sample("x", dist.Normal(loc, self.noise_scale).to_event(1), obs=x)

    def validate_data(self, x: Tensor, name: str = "data") -> None:
        check_matrix(x, self.x_dim, name)

    def log_joint(
        self, x: Tensor, latents: dict[str, Tensor], num_data: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(log p(x | z), log p(z))``, each ``[K, B]`` (density protocol)."""
        z = latents["z"]
        loc = F.linear(z, self.weight, self.bias)
        log_lik = dist.Normal(loc, self.noise_scale).log_prob(x).sum(-1)
        return log_lik, standard_normal_log_prob(z)

    def prior_distributions(self, x: Tensor, num_data: int | None = None
                            ) -> dict[str, dist.TorchDistribution]:
        """``{"z": p(z)}``, the standard normal prior (closed-form KL protocol)."""
        return {"z": standard_normal_prior(x, self.z_dim)}

    def marginal(self) -> dist.MultivariateNormal:
        """``p(x) = N(b, W W^T + sigma^2 I)``."""
        eye = torch.eye(self.x_dim, dtype=self.weight.dtype, device=self.weight.device)
        cov = self.weight @ self.weight.T + self.noise_scale**2 * eye
        return dist.MultivariateNormal(self.bias, covariance_matrix=cov)

    def exact_log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(x)`` for each row of ``x``: shape ``[N]``."""
        check_width(x, self.x_dim, "x")
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: Tensor) -> dist.MultivariateNormal:
        """``p(z | x)`` for each row of ``x``, batch shape ``[N]``."""
        w, var = self.weight, self.noise_scale**2
        eye = torch.eye(self.z_dim, dtype=w.dtype, device=w.device)
        precision = (w.T @ w + var * eye) / var
        cov = torch.linalg.inv(precision)
        loc = (x - self.bias) @ w @ cov.T / var
        return dist.MultivariateNormal(loc, covariance_matrix=cov.expand(x.shape[0], -1, -1))
