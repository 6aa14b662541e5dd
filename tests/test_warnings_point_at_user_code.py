"""Warnings raised deep inside an engine (or inside pyro's MCMC loop that drives a
kernel) name the user's line that started the run, not a library frame."""

import warnings
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC
from user_models.sgmcmc_models import regression, regression_data

from posterity.infer.sgmcmc import SGLD
from posterity.infer.smc import ParticleFilter
from posterity.models import StateSpaceModel


class Spiky(StateSpaceModel):
    """Observation noise 0.01 against states that move by 0.1: data of spread 3 make the
    filter's weights collapse at once."""

    def initial(self):
        return dist.Normal(torch.zeros(1), 1.0).to_event(1)

    def transition(self, x_prev, t):
        return dist.Normal(x_prev, 0.1).to_event(1)

    def emission(self, x, t):
        return dist.Normal(x, 0.01).to_event(1)


def caught(run) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        run()
    return [r for r in records if "num_chains" not in str(r.message)]


def test_a_kernels_warm_up_warning_names_the_line_that_ran_the_chain():
    data = regression_data(100, 3, seed=0, dtype=torch.float64)
    pyro.set_rng_seed(0)
    mcmc = MCMC(SGLD(partial(regression, subsample_size=20)), num_samples=3, warmup_steps=0,
                disable_progbar=True)
    records = caught(lambda: mcmc.run(data))
    assert records and all(r.filename == __file__ for r in records), [
        (r.filename, str(r.message)[:60]) for r in records]


def test_the_filters_collapse_warning_names_the_line_that_ran_the_filter():
    torch.manual_seed(0)
    ys = torch.randn(10, 1) * 3
    records = caught(lambda: ParticleFilter(Spiky(), num_particles=100, progress=False).run(ys))
    assert records and all(r.filename == __file__ for r in records), [
        (r.filename, str(r.message)[:60]) for r in records]
