"""The vectorized importance weights: fast path, traced path and plate handling."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import TwoLayerGuide, TwoLayerModel
from pyro import poutine

from posterity.guides import GaussianEncoder
from posterity.infer.importance import (
    has_density_protocol,
    max_plate_nesting,
    traced_particles,
    weighted_particles,
)
from posterity.infer.wake_sleep import helmholtz_machine
from posterity.models import VAE, LinearGaussianVAE

BUILT_INS = {
    "bernoulli VAE": lambda: (VAE(20, 4, (16,)), GaussianEncoder(20, 4, (16,)), True),
    "gaussian VAE": lambda: (
        VAE(20, 4, (16, 8), likelihood="gaussian"), GaussianEncoder(20, 4, (8, 16)), False
    ),
    "linear-Gaussian VAE": lambda: (LinearGaussianVAE(20, 4), GaussianEncoder(20, 4, ()), False),
    "sigmoid belief net": lambda: (*helmholtz_machine((20, 8, 4, 3)), True),
}


@pytest.mark.parametrize("name", BUILT_INS)
def test_density_protocol_equals_the_traced_programs(name):
    model, guide, binary = BUILT_INS[name]()
    x = torch.bernoulli(torch.full((7, 20), 0.4)) if binary else torch.randn(7, 20)
    assert has_density_protocol(model, guide)
    pyro.set_rng_seed(3)
    fast = weighted_particles(model, guide, (x,), num_particles=5, plate_nesting=1)
    pyro.set_rng_seed(3)
    traced = traced_particles(model, guide, (x,), {}, num_particles=5, plate_nesting=1)
    assert fast.latents.keys() == traced.latents.keys()
    for name in fast.latents:
        assert torch.equal(fast.latents[name], traced.latents[name])
    for term in ("log_likelihood", "log_prior", "log_guide"):
        assert getattr(fast, term).shape == (5, 7)
        torch.testing.assert_close(getattr(fast, term), getattr(traced, term))


def test_fast_path_steps_aside_under_a_pyro_handler():
    model, guide = VAE(20, 4, (16,)), GaussianEncoder(20, 4, (16,))
    with poutine.scale(scale=2.0):
        assert not has_density_protocol(model, guide)


def test_user_programs_get_per_data_point_weights_of_every_site():
    model, guide = TwoLayerModel(), TwoLayerGuide()
    x = torch.bernoulli(torch.full((6, 12), 0.5))
    assert max_plate_nesting(model, guide, x) == 1
    particles = weighted_particles(model, guide, (x,), num_particles=3, plate_nesting=1)
    assert set(particles.latents) == {"z1", "z2"}
    assert particles.latents["z1"].shape == (3, 6, 4)
    z1, z2 = particles.latents["z1"], particles.latents["z2"]
    by_hand = (
        dist.Normal(0.0, 1.0).log_prob(z2).sum(-1)
        + dist.Normal(model.f(z2), 0.5).log_prob(z1).sum(-1)
    )
    torch.testing.assert_close(particles.log_prior, by_hand)


def test_a_latent_outside_the_data_plate_is_refused():
    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="latent site 'loc' is outside the 'data' plate"):
        traced_particles(model, guide, (torch.randn(4),), {}, num_particles=2, plate_nesting=1)
