"""``step_size="auto"``, the default of SGLD and SGHMC: on a model written from the docs
(tests/user_models/sgmcmc_models.py, a linear regression with its own site names), the
kernels called with nothing but the model sample the exact posterior's spread.

The tolerance of each standard deviation is derived, not fitted: the bias that the
rule allows (the minibatch noise and the discretization widen a variance by at most
``NOISE_RATIO`` to first order; the allowance ``sqrt(1 + 2 NOISE_RATIO)`` also covers a
noise ``V`` underestimated by up to half, which a variance estimated from the 16
minibatch gradients of the second half of the probes does with probability under 1 %)
plus three Monte Carlo standard errors of a standard deviation estimated from ``ESS``
effective draws, ``1 / sqrt(2 ESS)``, with the ESS that ArviZ measures.
"""

import warnings
from functools import partial

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC
from user_models.sgmcmc_models import regression, regression_data

from posterity.infer.report import render
from posterity.infer.sgmcmc import (
    SGHMC,
    SGLD,
    PreconditionedSGLD,
    StructuredSGLD,
    StructuredSGMCMC,
    base,
)

N, D, B = 500, 3, 50


def exact_posterior_sd(data: dict) -> np.ndarray:
    """Coefficients then intercept: prior N(0, 2²), noise 0.5 (the model's)."""
    X = torch.cat([data["inputs"], torch.ones(len(X_ := data["inputs"]), 1,
                                              dtype=torch.float64)], 1)
    precision = X.T @ X / 0.5**2 + torch.eye(X_.shape[1] + 1, dtype=torch.float64) / 2.0**2
    return torch.linalg.inv(precision).diagonal().sqrt().numpy()


@pytest.mark.parametrize("n, batch", [(N, B), (200, 180)],
                         ids=["noise-limited", "curvature-limited"])
@pytest.mark.parametrize("make", [SGLD, PreconditionedSGLD, SGHMC],
                         ids=["SGLD", "pSGLD", "SGHMC"])
def test_the_default_step_size_samples_the_exact_posterior_spread(make, n, batch):
    """With minibatches of a tenth the noise sets the step; with nine tenths the
    discretization does (SGLD's variance ``1 / (1 - ε λ / 4)`` too wide)."""
    data = regression_data(n, D, seed=0, dtype=torch.float64)
    kernel = make(partial(regression, subsample_size=batch), thin=20)
    pyro.set_rng_seed(0)
    mcmc = MCMC(kernel, num_samples=300, warmup_steps=20, num_chains=2, disable_progbar=True)
    mcmc.run(data)
    samples = mcmc.get_samples(group_by_chain=True)
    draws = torch.cat([samples["coef"], samples["intercept"][..., None]], -1).numpy()
    ess = np.array([float(az.ess(draws[..., i])) for i in range(D + 1)])
    assert (ess > 30).all(), f"too few effective draws to test: {ess}"
    ratio = draws.reshape(-1, D + 1).std(0) / exact_posterior_sd(data)
    monte_carlo = 3 / np.sqrt(2 * ess)
    bias = np.sqrt(1 + 2 * base.NOISE_RATIO) - 1
    assert (ratio < 1 + bias + monte_carlo).all() and (ratio > 1 - monte_carlo).all(), (
        ratio, monte_carlo)
    assert 0 < kernel.schedule(kernel.num_steps - 1) < 1e-2


def test_the_measured_noise_is_the_largest_eigenvalue_of_the_minibatch_covariance():
    """At a fixed point, drawing ``B`` of ``N`` rows without replacement, the minibatch
    gradient's covariance is ``N² / B · (N - B) / (N - 1) · Σ``, with ``Σ`` the
    covariance of the per-row gradients ``-r_n [x_n, 1] / σ²``. With 4000 probes (the
    direction from 2000, the variance along it from the other 2000) the relative error
    of the estimate is about ``sqrt(2 / 2000)``; four of those."""
    data = regression_data(N, D, seed=0, dtype=torch.float64)
    kernel = SGLD(partial(regression, subsample_size=B))
    MCMC(kernel, num_samples=1, warmup_steps=0, disable_progbar=True)  # no run needed
    kernel.potential = base.Potential(kernel.model, (data,), {})
    point = {"coef": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64),
             "intercept": torch.tensor(0.1, dtype=torch.float64)}
    residual = data["targets"] - data["inputs"] @ point["coef"] - point["intercept"]
    X = torch.cat([data["inputs"], torch.ones(N, 1, dtype=torch.float64)], 1)
    per_row = -residual[:, None] * X / 0.5**2
    covariance = torch.cov(per_row.T, correction=0) * N**2 / B * (N - B) / (N - 1)
    expected = float(torch.linalg.eigvalsh(covariance)[-1])
    probes = 4000
    torch.manual_seed(0)
    measured = kernel.gradient_noise(point, probes=probes)
    assert abs(measured / expected - 1) < 4 * (2 / (probes / 2)) ** 0.5, (measured, expected)


def test_each_chain_reports_the_step_it_sampled_with(monkeypatch):
    """Two chains measure their own steps; ArviZ's ``step_size`` holds, for each chain,
    the step of the updates that made its draws."""
    data = regression_data(N, D, seed=0, dtype=torch.float64)
    kernel = SGLD(partial(regression, subsample_size=B))
    used: dict[int, float] = {}
    step = kernel.step

    def recorded(params, step_size, exploring):
        used[kernel.chain] = step_size
        return step(params, step_size, exploring)

    monkeypatch.setattr(kernel, "step", recorded)
    pyro.set_rng_seed(0)
    mcmc = MCMC(kernel, num_samples=5, warmup_steps=8, num_chains=2, disable_progbar=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="num_chains=.*available_cpu")
        mcmc.run(data)
    idata = kernel.to_inference_data(mcmc)
    steps = idata.sample_stats["step_size"].values
    assert steps.shape == (2, 5) and used[0] != used[1]
    assert np.array_equal(steps, np.array([[used[0]] * 5, [used[1]] * 5]))
    # the report shows every chain's step and names the run (the posterior's attrs)
    assert idata.posterior.attrs["kernel"] == "SGLD" and idata.posterior.attrs["thin"] == 1
    page = render(idata)
    assert "chain 1" in page and "the chains sampled with different steps" in page
    assert "warmup_steps" in page and "temperature" in page


def test_short_warm_ups_are_warned_about():
    data = regression_data(N, D, seed=0, dtype=torch.float64)
    model = partial(regression, subsample_size=B)
    with pytest.warns(UserWarning, match="measured the gradient noise at chain 0's start"):
        MCMC(SGLD(model), num_samples=3, warmup_steps=0, disable_progbar=True).run(data)
    for make in (SGLD, PreconditionedSGLD, SGHMC):  # 4 updates from a prior draw (sd 2)
        pyro.set_rng_seed(0)
        with pytest.warns(UserWarning, match="had not settled at the posterior"):
            MCMC(make(model), num_samples=3, warmup_steps=4, disable_progbar=True).run(data)


@pytest.mark.parametrize("base_kernel", [SGLD, PreconditionedSGLD, SGHMC])
def test_structured_kernels_take_their_base_kernels_rule(base_kernel):
    data = regression_data(100, D, seed=0, dtype=torch.float64)
    model = partial(regression, subsample_size=20)
    kernel = StructuredSGMCMC(base_kernel(model), groups="site")
    MCMC(kernel, num_samples=3, warmup_steps=4, disable_progbar=True).run(data)
    assert np.isfinite(kernel.schedule(0)) and kernel.schedule(0) > 0
    if base_kernel is SGHMC:
        assert np.isfinite(kernel.base.friction)
    assert StructuredSGLD(model).auto_step


def test_a_kernel_without_a_rule_or_a_model_without_noise_asks_for_a_step_size():
    model = partial(regression, subsample_size=20)
    class OwnKernel(base.SGMCMCKernel):  # a kernel of one's own, with no step rule
        def update(self, params, grads, step_size, exploring):
            return params

    with pytest.raises(ValueError, match="OwnKernel has no automatic step size"):
        OwnKernel(model)
    assert PreconditionedSGLD(model).auto_step
    with pytest.raises(ValueError, match="give the friction too"):
        SGHMC(model, step_size=1e-4, friction="auto")
    with pytest.raises(ValueError, match="a number, a Schedule or 'auto'"):
        SGLD(model, step_size="adaptive")
    data = regression_data(20, D, seed=0, dtype=torch.float64)
    full_batch = SGLD(partial(regression, subsample_size=20), require_subsample=False)
    with pytest.raises(ValueError, match="gradient has none"):
        MCMC(full_batch, num_samples=2, warmup_steps=0, disable_progbar=True).run(data)


def test_a_step_size_of_ones_own_keeps_sghmcs_friction_of_10():
    assert SGHMC(lambda: None, step_size=1e-3).friction == 10.0
