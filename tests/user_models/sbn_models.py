"""Sigmoid belief nets written from the documented protocol alone (DESIGN.md, the
``posterity.infer.wake_sleep.WakeSleep`` docstring): a ``PyroModule`` whose ``forward(images)`` is
the Pyro program, data in ``pyro.plate("data")``, Bernoulli latents whose logits come
out of ``nn.Linear`` layers, and a recognition program with the same latent site names.
Nothing here uses the built-in classes or their site names (``z_1``, ``x``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn


class CauseFeatureImage(PyroModule):
    """``p(cause) p(feature | cause) p(image | feature)``: two layers of binary latents
    above binary images, the top one with free logits."""

    def __init__(self, pixels: int = 16, features: int = 6, causes: int = 3) -> None:
        super().__init__()
        self.cause_logits = nn.Parameter(torch.zeros(causes))
        self.feature_net = nn.Linear(causes, features)
        self.image_net = nn.Linear(features, pixels)

    def forward(self, images: torch.Tensor) -> None:
        with pyro.plate("data", images.shape[0]):
            cause = pyro.sample("cause", dist.Bernoulli(logits=self.cause_logits).to_event(1))
            feature = pyro.sample("feature",
                                  dist.Bernoulli(logits=self.feature_net(cause)).to_event(1))
            pyro.sample("image", dist.Bernoulli(logits=self.image_net(feature)).to_event(1),
                        obs=images)


class ImageFeatureCause(PyroModule):
    """The recognition program: ``q(feature | image) q(cause | feature)``."""

    def __init__(self, pixels: int = 16, features: int = 6, causes: int = 3) -> None:
        super().__init__()
        self.encode_feature = nn.Linear(pixels, features)
        self.encode_cause = nn.Linear(features, causes)

    def forward(self, images: torch.Tensor) -> None:
        with pyro.plate("data", images.shape[0]):
            feature = pyro.sample(
                "feature", dist.Bernoulli(logits=self.encode_feature(images)).to_event(1))
            pyro.sample("cause", dist.Bernoulli(logits=self.encode_cause(feature)).to_event(1))


def simulated_images(num_images: int, seed: int = 0, dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """Images drawn from a :class:`CauseFeatureImage` with strong weights (a fixed
    seed), ``[num_images, 16]``."""
    generator = torch.Generator().manual_seed(seed)
    truth = CauseFeatureImage()
    with torch.no_grad():
        for p in truth.parameters():
            p.copy_(3.0 * torch.randn(p.shape, generator=generator))
        cause = torch.bernoulli(torch.sigmoid(truth.cause_logits).expand(num_images, 3),
                                generator=generator)
        feature = torch.bernoulli(torch.sigmoid(truth.feature_net(cause)), generator=generator)
        images = torch.bernoulli(torch.sigmoid(truth.image_net(feature)), generator=generator)
    return images.to(dtype)
