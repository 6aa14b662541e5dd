"""Recognition networks ``q(z | x)`` for amortized inference."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor
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
from posterity.layers.plates import check_width, data_plate


class GaussianEncoder(MultiRateMixin, PyroModule):
    """``q(z | x) = N(mu(x), diag(sigma(x)^2))`` from an MLP (Kingma & Welling 2014).

    The network maps ``x`` to ``2 * z_dim`` outputs: the mean and a raw scale that
    passes through ``softplus`` (plus ``min_scale``) to stay positive. A multi-rate
    encoder reads the raw output as ``log σ`` instead: its gates ``2 sigmoid`` then move each
    unit between its posterior and the prior N(0, 1) (a closed gate gives mean 0 and
    σ = 1), which a unit needs in order to serve small β and collapse at large β. With
    ``softplus`` a gate only shrinks the raw value towards 0 (σ = 0.69) without changing
    its sign, and the linear check of ``tests/test_multirate.py`` missed the optimum by
    2.9 nats at β = 9.

    Args:
        x_dim: data width.
        z_dim: latent width; the site is named ``latent_name`` (default ``"z"``).
        hidden: hidden widths from ``x`` to ``z``; ``()`` gives a linear encoder.
        activation: hidden nonlinearity.
        multi_rate: gate every layer by ``log β`` with ``2 sigmoid`` gates (Multi-Rate
            VAE, Bae et al. 2023; :mod:`posterity.layers.gated` says why not the
            sigmoid), the output gates staggered over the β range at the start
            (:func:`~posterity.layers.stagger_gates`); the program then takes
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

    Example:
        >>> guide = GaussianEncoder(x_dim=784, z_dim=50, hidden=(200, 200))
        >>> loc, scale = guide.posterior_params(torch.zeros(2, 784))
        >>> loc.shape
        torch.Size([2, 50])
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: str = "tanh",
        latent_name: str = "z",
        min_scale: float = 1e-5,
        multi_rate: bool = False,
        beta_range: tuple[float, float] = DEFAULT_BETA_RANGE,
        beta_extension: float = DEFAULT_BETA_EXTENSION,
        response_rank: int = DEFAULT_RESPONSE_RANK,
        response_degree: int = DEFAULT_RESPONSE_DEGREE,
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.latent_name = x_dim, z_dim, latent_name
        self.min_scale = min_scale
        self._init_multi_rate(multi_rate, beta_range, beta_extension)
        if self.multi_rate:
            self.net = GatedMLP(x_dim, hidden, 2 * z_dim, "two_sigmoid", activation,
                                rank=response_rank, degree=response_degree)
            stagger_gates(self.net.layers[-1], repeats=2)  # mean and log σ share them
        else:
            self.net = mlp(x_dim, hidden, 2 * z_dim, activation)

    def posterior_params(self, x: Tensor, beta=None) -> tuple[Tensor, Tensor]:
        """Mean and scale of ``q(z | x)`` (at ``beta``), each ``[..., z_dim]``."""
        u = self._standardized(beta, x)
        out = self.net(x) if u is None else self.net(x, u)
        loc, raw_scale = out.chunk(2, dim=-1)
        scale = raw_scale.exp() if self.multi_rate else F.softplus(raw_scale)
        return loc, scale + self.min_scale

    def forward(self, x: Tensor, num_data: int | None = None, beta=None) -> None:
        check_width(x, self.x_dim, "x")
        loc, scale = self.posterior_params(x, beta)
        with data_plate(x, num_data):
            pyro.sample(self.latent_name, dist.Normal(loc, scale).to_event(1))

    def latent_distributions(self, x: Tensor, num_data: int | None = None, beta=None
                             ) -> dict[str, dist.TorchDistribution]:
        """``{latent_name: q(z | x)}`` with batch shape ``[B]`` (closed-form KL
        protocol); its ``rsample((K,))`` draws what :meth:`sample_latents` draws."""
        check_width(x, self.x_dim, "x")
        loc, scale = self.posterior_params(x, beta)
        return {self.latent_name: dist.Normal(loc, scale).to_event(1)}

    def sample_latents(
        self, x: Tensor, num_particles: int, num_data: int | None = None, beta=None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``K`` reparameterized draws per row and their log density (density protocol).

        Returns ``({latent_name: [K, B, z_dim]}, log_q [K, B])``; draws the same random
        numbers as the traced ``forward`` under a particle plate.
        """
        check_width(x, self.x_dim, "x")
        loc, scale = self.posterior_params(x, beta)
        noise = torch.empty((num_particles, *loc.shape), dtype=loc.dtype, device=loc.device)
        noise.normal_()
        z = loc + noise * scale
        log_q = -0.5 * noise.pow(2).sum(-1) - scale.log().sum(-1) - _HALF_LOG_2PI * self.z_dim
        return {self.latent_name: z}, log_q


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
