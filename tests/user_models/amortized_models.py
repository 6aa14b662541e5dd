"""A convolutional VAE written from the documented protocol alone (DESIGN.md, the
``posterity.infer.amortized.AmortizedVI`` docstring): a ``PyroModule`` model and guide whose
``forward(images)`` are the Pyro programs, images ``[N, 1, 8, 8]`` in
``pyro.plate("data")``, a reparameterizable latent site with the same name in both,
``Conv2d`` layers in the encoder and ``ConvTranspose2d`` layers in the decoder. The
site names (``code``, ``pixels``) are its own; nothing here uses the built-in classes.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F


class ConvDecoderModel(PyroModule):
    """``code ~ N(0, I)``, ``pixels | code ~ Bernoulli(logits=deconv(code))`` on 8x8."""

    def __init__(self, code_dim: int = 4, channels: int = 8) -> None:
        super().__init__()
        self.code_dim, self.channels = code_dim, channels
        self.project = nn.Linear(code_dim, channels * 4 * 4)
        self.deconv = nn.ConvTranspose2d(channels, 1, kernel_size=4, stride=2, padding=1)

    def logits(self, code: torch.Tensor) -> torch.Tensor:
        """``[..., code_dim]`` -> ``[..., 1, 8, 8]``: leading dimensions are batch."""
        batch = code.shape[:-1]
        h = F.relu(self.project(code)).reshape(-1, self.channels, 4, 4)
        return self.deconv(h).reshape(*batch, 1, 8, 8)

    def forward(self, images: torch.Tensor) -> None:
        with pyro.plate("data", images.shape[0]):
            prior = dist.Normal(images.new_zeros(self.code_dim), images.new_ones(self.code_dim))
            code = pyro.sample("code", prior.to_event(1))
            pyro.sample("pixels", dist.Bernoulli(logits=self.logits(code)).to_event(3),
                        obs=images)


class ConvEncoderGuide(PyroModule):
    """``q(code | images) = N(mu, diag(sigma^2))`` from two ``Conv2d`` layers."""

    def __init__(self, code_dim: int = 4, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=4, stride=2, padding=1)
        self.head = nn.Linear(channels * 4 * 4, 2 * code_dim)

    def forward(self, images: torch.Tensor) -> None:
        h = F.relu(self.conv(images)).flatten(1)
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        with pyro.plate("data", images.shape[0]):
            pyro.sample("code", dist.Normal(loc, F.softplus(raw_scale) + 1e-4).to_event(1))


def digit_images(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded binarized 8x8 digits as ``(train, test)`` images ``[N, 1, 8, 8]``."""
    from posterity.datasets import binarized_digits

    train, _, test = binarized_digits()
    return (train.reshape(-1, 1, 8, 8).to(dtype), test.reshape(-1, 1, 8, 8).to(dtype))
