"""SG-MCMC kernels: Gaussian targets with known moments, NUTS on Bayesian logistic
regression, the 25-Gaussian mixture, structured SG-MCMC, schedules, errors, ArviZ.

Tolerances come from the effective sample size of each chain (ArviZ bulk ESS): a mean
is within 4 sd/sqrt(ESS), a variance within a relative 4 sqrt(2/ESS). Step sizes are
chosen from each target's curvature so that the kernels' known biases (discretization
and minibatch noise, a few percent of the variance) stay well inside those bounds.
"""

import json
import math
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC
from sgmcmc_targets import MODES, TwentyFiveGaussians, gaussian_target

from posterity.datasets import pima, standardize
from posterity.infer import NonFiniteError, to_inference_data
from posterity.infer.sgmcmc import (
    SGHMC,
    SGLD,
    ConstantSchedule,
    CyclicalSchedule,
    PolynomialDecay,
    Potential,
    PreconditionedSGLD,
    StructuredSGMCMC,
)
from posterity.models import BayesianLogisticRegression, BayesianMLP

REFERENCE = Path(__file__).parent / "reference" / "pima_nuts.json"


def ess(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS of each column of ``[draws, dim]`` (one chain)."""
    return np.array([float(az.ess(draws[None, :, j])) for j in range(draws.shape[1])])


def run(kernel, num_samples: int, *args, burn_in: int = 2000) -> dict:
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=burn_in // kernel.thin,
                disable_progbar=True)
    mcmc.run(*args)
    return mcmc.get_samples()


# (kernel factory, steps) per target: ε chosen from the curvature, see the module docstring
# pSGLD's ε is larger by 1/G, its preconditioner at the mode (G ≈ 1/sqrt(V) ≈ 0.04)
KERNELS = {
    "SGLD": lambda m, scale, init: SGLD(m, step_size=2e-4 * scale, thin=10,
                                        initial_params=init),
    "pSGLD": lambda m, scale, init: PreconditionedSGLD(m, step_size=1e-2 * scale, thin=10,
                                                       initial_params=init),
    "SGHMC": lambda m, scale, init: SGHMC(m, step_size=2e-3 * math.sqrt(scale),
                                          friction=10.0, thin=10, initial_params=init),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dim, correlation, scale", [(2, 0.8, 1.0), (10, 0.5, 2.5)],
                         ids=["2d", "10d"])
def test_gaussian_target_moments(kernel, dim, correlation, scale, diagnostics_report):
    target = gaussian_target(dim, correlation)
    mean, cov = target.posterior()
    pyro.set_rng_seed(1)
    start = {"theta": torch.zeros(dim)}
    draws = run(KERNELS[kernel](target, scale, start), 2000)["theta"].numpy()  # 20 000 updates
    n_eff = ess(draws)
    sd = cov.diagonal().sqrt().numpy()
    assert (np.abs(draws.mean(0) - mean.numpy()) < 4 * sd / np.sqrt(n_eff)).all(), \
        (draws.mean(0), mean, n_eff)
    variance_ratio = draws.var(0) / cov.diagonal().numpy()
    assert (np.abs(variance_ratio - 1) < 4 * np.sqrt(2 / n_eff)).all(), (variance_ratio, n_eff)
    true_corr = (cov[0, 1] / (sd[0] * sd[1])).item()
    sample_corr = np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]
    assert abs(sample_corr - true_corr) < 4 * (1 - true_corr**2) / np.sqrt(n_eff[:2].min())
    if dim == 2:
        diagnostics_report.add(
            f"{kernel} on a correlated 2-D Gaussian",
            az.from_dict(posterior={"theta": draws[None]}),
            f"ESS {n_eff.round(0)}, variance ratio {variance_ratio.round(3)}",
        )


def test_logistic_regression_agrees_with_nuts():
    reference = json.loads(REFERENCE.read_text())
    ref_mean, ref_sd = np.array(reference["mean"]), np.array(reference["sd"])
    ref_ess = np.array(reference["ess"])
    X, y = pima()
    (X,) = standardize(X)
    kernels = {
        "SGLD": lambda m: SGLD(m, step_size=1e-4, thin=10),
        "pSGLD": lambda m: PreconditionedSGLD(m, step_size=2e-3, thin=10),
        "SGHMC": lambda m: SGHMC(m, step_size=1e-3, friction=20.0, thin=10),  # small step
    }
    for name, make in kernels.items():
        pyro.set_rng_seed(2)
        model = BayesianLogisticRegression(8, subsample_size=128)
        samples = run(make(model), 3000, X, y)
        draws = torch.cat([samples["weight"], samples["bias"][:, None]], 1).numpy()
        n_eff = ess(draws)
        tolerance = 4 * ref_sd * np.sqrt(1 / n_eff + 1 / ref_ess)
        assert (np.abs(draws.mean(0) - ref_mean) < tolerance).all(), (name, draws.mean(0))
        sd_tolerance = 4 * np.sqrt(1 / (2 * n_eff) + 1 / (2 * ref_ess))
        assert (np.abs(draws.std(0) / ref_sd - 1) < sd_tolerance).all(), (name, draws.std(0))


def count_modes(theta: torch.Tensor, radius: float = 0.5) -> int:
    distance = (theta[:, None, :] - MODES).norm(dim=-1)
    return int(((distance < radius).any(0)).sum())


def test_cyclical_sgld_visits_more_of_the_25_gaussians():
    """Zhang et al. (2020, figure 2): at the same budget, cyclical SGLD explores the
    mixture while constant-step SGLD stays near the modes it starts in."""
    budget, cycles = 30_000, 30
    visited = {}
    for name, step_size in [
        ("constant", 0.01),
        ("cyclical", CyclicalSchedule(0.1, num_cycles=cycles, total_steps=budget,
                                      exploration_ratio=0.0)),
    ]:
        pyro.set_rng_seed(3)
        kernel = SGLD(TwentyFiveGaussians(), step_size=step_size, thin=10,
                      require_subsample=False, initial_params={"theta": torch.zeros(2)})
        mcmc = MCMC(kernel, num_samples=budget // 10, warmup_steps=0, disable_progbar=True)
        mcmc.run()
        visited[name] = count_modes(mcmc.get_samples()["theta"])
    assert visited["cyclical"] >= 2 * visited["constant"], visited
    assert visited["cyclical"] >= 15, visited


def test_structured_with_one_group_is_the_base_kernel_step_for_step():
    X, y = pima()
    (X,) = standardize(X)
    model = BayesianLogisticRegression(8, subsample_size=32)
    start = {"weight": torch.zeros(8), "bias": torch.zeros(())}
    chains = {}
    for name in ("base", "structured"):
        base = SGHMC(model, step_size=1e-3, friction=5.0, initial_params=dict(start))
        kernel = base if name == "base" else StructuredSGMCMC(
            base, groups={"weight": torch.zeros(8), "bias": torch.zeros(())})
        pyro.set_rng_seed(4)
        kernel.setup(0, X, y)
        params, trajectory = kernel.initial_params, []
        for _ in range(50):
            params = kernel.sample(params)
            trajectory.append(torch.cat([params["weight"], params["bias"][None]]))
        chains[name] = torch.stack(trajectory)
    assert torch.equal(chains["base"], chains["structured"])


@pytest.mark.parametrize("groups", ["site", "layer", "random", "permuted", "neuron"])
def test_structured_groupings_sample_a_bayesian_mlp(groups):
    X, y = torch.randn(100, 3), torch.randn(100)
    pyro.set_rng_seed(5)
    model = BayesianMLP(3, (8,), 1, subsample_size=20)
    kernel = StructuredSGMCMC(SGLD(model, step_size=1e-4), groups=groups, num_groups=3,
                              buffer="reservoir", dropout=0.5, num_composites=2,
                              buffer_size=20)
    samples = run(kernel, 20, X, y, burn_in=20)
    assert samples["layer0.weight"].shape == (20, 8, 3)
    assert all(torch.isfinite(v).all() for v in samples.values())
    # "layer": layer0.*, layer1.* and noise_scale; "site": five sites
    assert len(kernel.groups) == (5 if groups == "site" else 3)


def test_density_protocol_equals_the_traced_potential():
    cases = [
        (BayesianLogisticRegression(3, subsample_size=20), torch.randn(100, 3),
         torch.bernoulli(torch.full((100,), 0.5))),
        (BayesianMLP(4, (8,), 1, subsample_size=10), torch.randn(50, 4), torch.randn(50)),
        (BayesianMLP(4, (8, 6), 3, likelihood="categorical", subsample_size=10),
         torch.randn(50, 4), torch.randint(0, 3, (50,))),
    ]
    for model, X, y in cases:
        potential = Potential(model, (X, y))
        params = potential.prior_draw()
        pyro.set_rng_seed(6)
        fast_value, fast_grad = potential.value_and_grad(params)
        pyro.set_rng_seed(6)
        with poutine.scale(scale=1.0):  # any density-changing handler forces tracing
            traced_value, traced_grad = potential.value_and_grad(params)
        torch.testing.assert_close(fast_value, traced_value)
        for name in params:
            torch.testing.assert_close(fast_grad[name], traced_grad[name])


def test_temperature_scales_the_posterior_variance():
    target = gaussian_target(2, 0.0)
    _, cov = target.posterior()
    pyro.set_rng_seed(7)
    kernel = SGLD(target, step_size=2e-4, temperature=0.25, thin=10,
                  initial_params={"theta": torch.zeros(2)})
    draws = run(kernel, 2000)["theta"].numpy()
    n_eff = ess(draws)
    ratio = draws.var(0) / (0.25 * cov.diagonal().numpy())
    assert (np.abs(ratio - 1) < 4 * np.sqrt(2 / n_eff)).all(), ratio


# --- schedules ------------------------------------------------------------------------
def test_cyclical_schedule_follows_zhang_et_al():
    schedule = CyclicalSchedule(0.1, num_cycles=4, total_steps=100, exploration_ratio=0.2)
    assert schedule.cycle_length == 25
    assert schedule(0) == pytest.approx(0.1) and schedule(25) == pytest.approx(0.1)
    assert schedule(12) == pytest.approx(0.05 * (math.cos(math.pi * 12 / 25) + 1))
    assert [schedule.is_exploration(t) for t in (0, 4, 5, 24, 25)] == [True, True, False,
                                                                      False, True]
    assert PolynomialDecay(1.0, 1.0, 0.5)(3) == pytest.approx(0.5)
    assert ConstantSchedule(0.3)(1000) == 0.3


def test_exploration_updates_return_no_samples():
    schedule = CyclicalSchedule(1e-3, num_cycles=2, total_steps=20, exploration_ratio=0.5)
    kernel = SGLD(lambda: None, step_size=schedule, thin=2)
    # cycles of 10: updates 0-4 explore, 5-9 sample; two sampling updates per sample,
    # so the third sample takes update 9 and, after exploring 10-14, update 15
    assert kernel.step_indices(5) == [6, 8, 15, 17, 19]


# --- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize("step_size", [0.0, -1e-3])
def test_non_positive_step_size(step_size):
    with pytest.raises(ValueError, match="step_size must be > 0"):
        SGLD(BayesianLogisticRegression(3), step_size=step_size)


def test_model_without_a_subsampled_plate():
    kernel = SGLD(BayesianLogisticRegression(3), step_size=1e-3)  # no subsample_size
    with pytest.raises(ValueError, match="needs a model whose data plate subsamples"):
        MCMC(kernel, num_samples=2, disable_progbar=True).run(torch.randn(10, 3),
                                                               torch.ones(10))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_exploration_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match="exploration_ratio must be in \\[0, 1\\)"):
        CyclicalSchedule(1e-3, num_cycles=2, total_steps=100, exploration_ratio=ratio)


def test_divergence_names_the_update():
    X, y = torch.randn(50, 3), torch.randn(50)
    kernel = SGLD(BayesianMLP(3, (4,), 1, subsample_size=10), step_size=1e3)
    with pytest.raises(NonFiniteError, match="potential became .* at update"):
        MCMC(kernel, num_samples=50, warmup_steps=0, disable_progbar=True).run(X, y)


def test_bad_data_is_refused_at_setup():
    X = torch.randn(20, 3)
    X[2, 1] = float("nan")
    kernel = SGLD(BayesianLogisticRegression(3, subsample_size=5), step_size=1e-3)
    with pytest.raises(ValueError, match="X contains NaN"):
        kernel.setup(0, X, torch.ones(20))


# --- ArviZ ----------------------------------------------------------------------------------
def test_inference_data_has_predictive_pointwise_likelihood_and_step_sizes():
    X, y = torch.randn(60, 3), torch.randn(60)
    pyro.set_rng_seed(8)
    model = BayesianMLP(3, (6,), 1, subsample_size=20)
    kernel = SGLD(model, step_size=CyclicalSchedule(1e-4, 2, 400, 0.25), thin=3)
    mcmc = MCMC(kernel, num_samples=100, warmup_steps=0, num_chains=2, disable_progbar=True)
    mcmc.run(X, y)
    idata = to_inference_data(mcmc)
    assert {"posterior", "posterior_predictive", "log_likelihood", "sample_stats",
            "observed_data"} <= set(idata.groups())
    assert idata.log_likelihood["obs"].shape == (2, 100, 60)
    expected = [kernel.schedule(t) for t in kernel.step_indices(100)]
    np.testing.assert_allclose(idata.sample_stats["step_size"].values[0], expected)
    assert np.isfinite(az.loo(idata).elpd_loo)
    assert az.summary(idata, var_names=["noise_scale"])["r_hat"].notna().all()


def test_cuda_sgld(cuda):
    X, y = torch.randn(100, 3, device=cuda), torch.bernoulli(torch.full((100,), 0.5,
                                                                          device=cuda))
    model = BayesianLogisticRegression(3, subsample_size=20)
    start = {"weight": torch.zeros(3, device=cuda), "bias": torch.zeros((), device=cuda)}
    kernel = SGLD(model, step_size=1e-3, initial_params=start)
    mcmc = MCMC(kernel, num_samples=20, warmup_steps=0, disable_progbar=True)
    mcmc.run(X, y)
    assert mcmc.get_samples()["weight"].device.type == "cuda"
