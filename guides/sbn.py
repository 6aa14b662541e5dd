"""The recognition network of a sigmoid belief net (see :mod:`posterity.models.sbn`)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from posterity.layers.bernoulli import bernoulli_log_prob, bernoulli_site, check_layers, latent_site
from posterity.layers.plates import check_width, data_plate


class SigmoidRecognitionNet(PyroModule):
    """The recognition net ``q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})``.

    Args:
        layers: ``(D, n_1, ..., n_L)`` as for :class:`SigmoidBeliefNet`.

    Example:
        >>> guide = SigmoidRecognitionNet(layers=(784, 200, 200, 10))
        >>> latents, log_q = guide.sample_latents(torch.zeros(3, 784), num_particles=5)
        >>> latents["z_1"].shape, log_q.shape
        (torch.Size([5, 3, 200]), torch.Size([5, 3]))
    """

    def __init__(self, layers: Sequence[int] = (784, 200, 200, 10)) -> None:
        super().__init__()
        self.layers = check_layers(layers)
        self.num_latent_layers = len(self.layers) - 1
        # recognition[l] maps layer l to the logits of layer l + 1 (layer 0 is x)
        self.recognition = nn.ModuleList(
            nn.Linear(self.layers[level], self.layers[level + 1])
            for level in range(self.num_latent_layers)
        )

    @property
    def x_dim(self) -> int:
        return self.layers[0]

    def forward(self, x: Tensor, num_data: int | None = None) -> None:
        check_width(x, self.x_dim, "x")
        with data_plate(x, num_data):
            h = x
            for level in range(self.num_latent_layers):
                h = pyro.sample(latent_site(level + 1),
                                bernoulli_site(self.recognition[level](h)))

    def sample_latents(self, x: Tensor, num_particles: int, num_data: int | None = None
                       ) -> tuple[dict[str, Tensor], Tensor]:
        """``K`` draws per row, ``[K, B, n_l]`` each, and ``log q`` ``[K, B]`` (density
        protocol); the same random numbers as the traced program."""
        latents, log_q, h = {}, None, x
        for level in range(self.num_latent_layers):
            logits = self.recognition[level](h)
            if level == 0:  # x is shared by the K particles: one product, then expand
                logits = logits.expand(num_particles, *logits.shape)
            h = torch.bernoulli(torch.sigmoid(logits.detach()))
            term = bernoulli_log_prob(logits, h)
            log_q = term if log_q is None else log_q + term
            latents[latent_site(level + 1)] = h
        return latents, log_q

    def log_guide(self, x: Tensor, latents: dict[str, Tensor], num_data: int | None = None
                  ) -> Tensor:
        """``log q(z | x)`` of given latents ``[K, B, n_l]`` (``x`` may be ``[K, B, D]``)."""
        h, log_q = x, None
        for level in range(self.num_latent_layers):
            z = latents[latent_site(level + 1)]
            logits = self.recognition[level](h)
            term = bernoulli_log_prob(logits, z.expand_as(logits) if z.dim() < logits.dim()
                                      else z)
            log_q = term if log_q is None else log_q + term
            h = z
        return log_q
