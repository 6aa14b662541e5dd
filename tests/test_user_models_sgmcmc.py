"""Pyro programs written from the public docs alone (tests/user_models/sgmcmc_models.py)
run in the SG-MCMC kernels and convert to ArviZ; bad input gets a clear error.

Each model: a regression called as ``model(batch)`` with its own site names, a
hierarchical model with a positive scale, a softmax classifier. Small data, a few
hundred updates: these tests check plumbing (chains, shapes, groups, step sizes),
not statistics.
"""

import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC
from user_models.sgmcmc_models import (
    Hierarchical,
    SoftmaxClassifier,
    broadcasting_regression,
    classification_data,
    hierarchical_data,
    regression,
    regression_data,
)

from posterity.infer import NonFiniteError, to_inference_data
from posterity.infer.sgmcmc import (
    SGHMC,
    SGLD,
    CyclicalSchedule,
    PolynomialDecay,
    PreconditionedSGLD,
    StructuredSGMCMC,
)

WARMUP, SAMPLES, THIN, CHAINS = 30, 40, 2, 2
# pyro.infer.MCMC runs the chains in one process unless it has a spare core per chain
SEQUENTIAL = max(torch.multiprocessing.cpu_count() - 1, 1) < CHAINS


def _regression():
    batch = regression_data()
    return regression, (batch,), "target", batch["targets"]


def _hierarchical():
    scores, group = hierarchical_data()
    return Hierarchical(4), (scores, group), "score", scores


def _classification():
    features, labels = classification_data()
    return SoftmaxClassifier(2, 3), (features, labels), "label", labels


# (model, args, observed site, observed data) and a kernel with a schedule whose step
# size changes with the update, so that a wrong update index shows
CASES = {
    "regression": (_regression, lambda m: SGLD(m, PolynomialDecay(1e-3, 10.0, 0.55),
                                               thin=THIN)),
    "hierarchical": (_hierarchical, lambda m: PreconditionedSGLD(
        m, CyclicalSchedule(2e-3, 2, (WARMUP + SAMPLES) * THIN), thin=THIN)),
    "classification": (_classification, lambda m: SGHMC(
        m, PolynomialDecay(2e-2, 10.0, 0.55), friction=5.0, thin=THIN)),
}


def run(kernel, *args, num_chains=CHAINS, warmup=WARMUP, samples=SAMPLES):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="num_chains=.*available_cpu")
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=num_chains,
                    disable_progbar=True)
        mcmc.run(*args)
    return mcmc


@pytest.mark.parametrize("case", CASES)
def test_user_model_converts_to_arviz(case):
    make, make_kernel = CASES[case]
    model, args, site, observed = make()
    pyro.set_rng_seed(0)
    kernel = make_kernel(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. a schedule of the wrong length
        warnings.filterwarnings("ignore", message="num_chains=.*available_cpu")
        mcmc = run(kernel, *args)
    idata = to_inference_data(mcmc)
    assert {"posterior", "sample_stats", "log_likelihood", "posterior_predictive",
            "observed_data"} <= set(idata.groups())
    n = observed.shape[0]
    assert idata.log_likelihood[site].shape == (CHAINS, SAMPLES, n)
    assert idata.posterior_predictive[site].shape == (CHAINS, SAMPLES, n)
    np.testing.assert_array_equal(idata.observed_data[site].values, observed.numpy())
    # the first draw follows WARMUP draws of THIN updates each: update WARMUP * THIN + 1
    updates = idata.sample_stats["update"].values
    assert updates[0, 0] == WARMUP * THIN + THIN - 1
    np.testing.assert_array_equal(updates[1], updates[0])
    expected = [kernel.schedule(int(t)) for t in updates[0]]
    np.testing.assert_allclose(idata.sample_stats["step_size"].values[1], expected)
    assert not idata.sample_stats["diverging"].values.any()
    summary = az.summary(idata)
    assert np.isfinite(summary["r_hat"]).all() and np.isfinite(summary["ess_bulk"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k-hat warnings on short chains
        assert np.isfinite(az.loo(idata).elpd_loo)
        from_pyro = az.from_pyro(mcmc)
    assert from_pyro.sample_stats["diverging"].shape == (CHAINS, SAMPLES)
    assert not from_pyro.sample_stats["diverging"].values.any()


@pytest.mark.parametrize("case", CASES)
def test_chains_start_apart_reproducibly(case):
    """At a step size of 1e-12 the first draw is the start: chains differ, the same
    seed repeats them, and a reused kernel starts afresh."""
    make, _ = CASES[case]
    model, args, _, _ = make()

    def first_draws(kernel):
        samples = run(kernel, *args, warmup=0, samples=1).get_samples(group_by_chain=True)
        return torch.cat([v.reshape(CHAINS, -1) for _, v in sorted(samples.items())], -1)

    pyro.set_rng_seed(1)
    kernel = SGLD(model, 1e-12)
    starts = first_draws(kernel)
    assert (starts[0] - starts[1]).abs().max() > 1e-3
    if SEQUENTIAL:  # pyro's worker processes reseed from torch.initial_seed() + chain
        again = first_draws(kernel)  # same kernel, no reseeding
        assert (again - starts).abs().max() > 1e-3
    pyro.set_rng_seed(1)
    torch.testing.assert_close(first_draws(SGLD(model, 1e-12)), starts)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(first_draws(kernel), starts)


def test_positive_parameter_stays_positive_and_has_its_own_dims():
    model, args, _, _ = _hierarchical()
    pyro.set_rng_seed(2)
    mcmc = run(PreconditionedSGLD(model, 2e-3), *args, warmup=20, samples=30)
    idata = to_inference_data(mcmc)
    assert (idata.posterior["tau"].values > 0).all()
    assert idata.posterior["theta"].shape == (CHAINS, 30, 4)


def test_new_arguments_score_held_out_data():
    pyro.set_rng_seed(3)
    mcmc = run(SGLD(regression, 5e-4), regression_data(), num_chains=1, warmup=10, samples=20)
    held_out = regression_data(n=37, seed=9)
    idata = to_inference_data(mcmc, held_out)
    assert idata.log_likelihood["target"].shape == (1, 20, 37)
    np.testing.assert_array_equal(idata.observed_data["target"].values,
                                  held_out["targets"].numpy())
    # the run's own data are used when no argument is given
    assert to_inference_data(mcmc).log_likelihood["target"].shape == (1, 20, 100)


def test_float64_model_gives_float64_draws_in_every_kernel():
    batch = regression_data(dtype=torch.float64)
    kernels = {
        "SGLD": SGLD(regression, 5e-4),
        "pSGLD": PreconditionedSGLD(regression, 1e-4),
        "SGHMC": SGHMC(regression, 1e-2, friction=5.0),
        "structured": StructuredSGMCMC(SGLD(regression, 5e-4), groups="site",
                                       dropout=0.5),
    }
    for name, kernel in kernels.items():
        pyro.set_rng_seed(4)
        mcmc = run(kernel, batch, num_chains=1, warmup=5, samples=10)
        for site, value in mcmc.get_samples().items():
            assert value.dtype == torch.float64, (name, site, value.dtype)
        idata = to_inference_data(mcmc)
        assert idata.log_likelihood["target"].dtype == np.float64, name


# --- bad input ------------------------------------------------------------------------
def test_targets_as_a_column_are_refused_not_broadcast():
    pyro.set_rng_seed(5)
    mcmc = run(SGLD(regression, 5e-4), regression_data(), num_chains=1, warmup=0, samples=5)
    held_out = regression_data(n=10)
    held_out["targets"] = held_out["targets"][:, None]
    with pytest.raises(ValueError, match="observed site 'target' has a value of shape "
                                         r"\(10, 1\) but its distribution has shape \(10,\)"):
        to_inference_data(mcmc, held_out)


def test_a_likelihood_that_broadcasts_is_refused_at_setup():
    x, y = torch.randn(40), torch.randn(40)
    with pytest.raises(ValueError, match="observed site 'y' .* would broadcast"):
        run(SGLD(broadcasting_regression, 1e-3), x, y, num_chains=1, samples=2)


def test_initial_params_with_wrong_sites_or_shapes():
    batch = regression_data()
    with pytest.raises(ValueError, match="initial_params must give the latent sites"):
        run(SGLD(regression, 1e-3, initial_params={"coef": torch.zeros(3)}), batch,
            num_chains=1, samples=2)
    bad = {"coef": torch.zeros(4), "intercept": torch.zeros(())}
    with pytest.raises(ValueError, match=r"initial_params\['coef'\] must have shape \(3,\)"):
        run(SGLD(regression, 1e-3, initial_params=bad), batch, num_chains=1, samples=2)


def test_conversion_before_running():
    mcmc = MCMC(SGLD(regression, 1e-3), num_samples=5, disable_progbar=True)
    with pytest.raises(ValueError, match="has not run"):
        to_inference_data(mcmc)


@pytest.mark.parametrize("total_steps, message", [(60, "wraps into extra cycles"),
                                                  (400, "cut short")])
def test_schedule_of_the_wrong_length_warns(total_steps, message):
    # the run takes (10 + 30) samples x 2 updates = 80 updates
    schedule = CyclicalSchedule(1e-4, num_cycles=2, total_steps=total_steps)
    pyro.set_rng_seed(6)
    with pytest.warns(UserWarning, match=message):
        run(SGLD(regression, schedule, thin=2), regression_data(), num_chains=1, warmup=10,
            samples=30)


@pytest.mark.parametrize("make", [
    lambda m: SGLD(m, 10.0),
    lambda m: PreconditionedSGLD(m, 10.0),
    lambda m: SGHMC(m, 0.5, friction=1.0),
    lambda m: StructuredSGMCMC(SGHMC(m, 0.5, friction=1.0), groups="site"),
], ids=["SGLD", "pSGLD", "SGHMC", "structured"])
def test_a_diverging_chain_raises_naming_the_update(make):
    scores, group = hierarchical_data()
    pyro.set_rng_seed(7)
    with pytest.raises(NonFiniteError, match=r"at update \d+ of chain 0 \(step size"):
        run(make(Hierarchical(4)), scores, group, num_chains=1, warmup=0, samples=200)
