"""Sigmoid belief nets (Neal 1992) as Pyro programs, and their recognition networks.

``layers = (D, n_1, ..., n_L)`` lists widths from the data up: the generative net draws
``z_L`` from learned logits, then ``z_{l} | z_{l+1}`` and finally ``x | z_1``, each a
layer of independent Bernoulli units whose logits come from one ``nn.Linear``. The
recognition net (:class:`posterity.guides.SigmoidRecognitionNet`) runs the other way,
``z_1 | x`` up to ``z_L | z_{L-1}``, with the same site names. Together they form a
Helmholtz machine (Dayan, Hinton, Neal & Zemel 1995).

The top layer's logits are an ``nn.Linear(0, n_L)`` (a bias with no inputs), so that
every Bernoulli layer is an ``nn.Linear`` and the natural-gradient preconditioner of
:mod:`posterity.infer.wake_sleep.natural` covers all of them alike.

Both programs implement the density protocol of :mod:`posterity.infer.importance`
(``sample_latents`` / ``log_joint``) and the wake-sleep extension
(``sample_joint`` / ``log_guide``) used by :class:`posterity.infer.wake_sleep.WakeSleep`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pyro
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

from posterity.layers.bernoulli import bernoulli_log_prob, bernoulli_site, check_layers, latent_site
from posterity.layers.plates import check_binary, check_width, data_plate


class SigmoidBeliefNet(PyroModule):
    """The generative net ``p(z_L) p(z_{L-1} | z_L) ... p(x | z_1)``.

    Args:
        layers: ``(D, n_1, ..., n_L)``, data width first.

    Example:
        >>> model = SigmoidBeliefNet(layers=(784, 200, 200, 10))
        >>> samples = model.sample_joint(torch.zeros(3, 784), num_particles=2)
        >>> samples["x"].shape, samples["z_3"].shape
        (torch.Size([2, 3, 784]), torch.Size([2, 3, 10]))
    """

    def __init__(self, layers: Sequence[int] = (784, 200, 200, 10)) -> None:
        super().__init__()
        self.layers = check_layers(layers)
        self.num_latent_layers = len(self.layers) - 1
        with warnings.catch_warnings():  # a Linear with no inputs warns about its init
            warnings.simplefilter("ignore", UserWarning)
            self.top = nn.Linear(0, self.layers[-1])
        nn.init.zeros_(self.top.bias)
        # generative[l] maps layer l + 1 to the logits of layer l (layer 0 is x)
        self.generative = nn.ModuleList(
            nn.Linear(self.layers[level + 1], self.layers[level])
            for level in range(self.num_latent_layers)
        )

    @property
    def x_dim(self) -> int:
        return self.layers[0]

    def top_logits(self, batch_shape: torch.Size) -> Tensor:
        return self.top(self.top.bias.new_zeros(*batch_shape, 0))

    def forward(self, x: Tensor, num_data: int | None = None) -> None:
        check_width(x, self.x_dim, "x")
        with data_plate(x, num_data):
            h = pyro.sample(latent_site(self.num_latent_layers),
                            bernoulli_site(self.top_logits(x.shape[:-1])))
            for level in range(self.num_latent_layers - 1, 0, -1):
                h = pyro.sample(latent_site(level), bernoulli_site(self.generative[level](h)))
            pyro.sample("x", bernoulli_site(self.generative[0](h)), obs=x)

    def validate_data(self, x: Tensor, name: str = "data") -> None:
        check_width(x, self.x_dim, name)
        check_binary(x, name)

    def log_joint(self, x: Tensor, latents: dict[str, Tensor], num_data: int | None = None
                  ) -> tuple[Tensor, Tensor]:
        """``(log p(x | z_1), log p(z))``, each ``[K, B]`` (density protocol)."""
        top = latents[latent_site(self.num_latent_layers)]
        log_prior = bernoulli_log_prob(self.top_logits(top.shape[:-1]), top)
        for level in range(self.num_latent_layers - 1, 0, -1):
            log_prior = log_prior + bernoulli_log_prob(
                self.generative[level](latents[latent_site(level + 1)]),
                latents[latent_site(level)])
        logits = self.generative[0](latents[latent_site(1)])
        return bernoulli_log_prob(logits, x.expand_as(logits)), log_prior

    def sample_joint(self, x: Tensor, num_particles: int, num_data: int | None = None
                     ) -> dict[str, Tensor]:
        """Ancestral draws of every site, ``[K, B, width]`` (``B`` = rows of ``x``, whose
        values are not used): the sleep phase's samples."""
        shape = torch.Size((num_particles, *x.shape[:-1]))
        h = torch.bernoulli(torch.sigmoid(self.top_logits(shape)))
        draws = {latent_site(self.num_latent_layers): h}
        for level in range(self.num_latent_layers - 1, -1, -1):
            h = torch.bernoulli(torch.sigmoid(self.generative[level](h)))
            draws["x" if level == 0 else latent_site(level)] = h
        return draws

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> Tensor:
        """``num_samples`` draws of ``x`` (``mean=True``: the pixel probabilities
        ``E[x | z_1]`` of ancestral ``z_1``), ``[num_samples, D]``."""
        draws = self.sample_joint(self.top.bias.new_zeros(num_samples, self.x_dim), 1)
        if not mean:
            return draws["x"][0]
        return torch.sigmoid(self.generative[0](draws[latent_site(1)][0]))
