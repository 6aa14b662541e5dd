"""SG-MCMC kernels: Gaussian targets with known moments, NUTS on Bayesian logistic
regression, the 25-Gaussian mixture, structured SG-MCMC, schedules, errors, ArviZ.

Tolerances come from the effective sample size of each chain (ArviZ bulk ESS): a mean
is within 4 sd/sqrt(ESS), a variance within a relative 4 sqrt(2/ESS). Step sizes are
chosen from each target's curvature so that the kernels' known biases (discretization
and minibatch noise, a few percent of the variance) stay well inside those bounds.
"""

import json
import math
import warnings
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


# (kernel factory, steps) per target: ε chosen from the curvature, see the module docstring.
# pSGLD's preconditioner G = 1/(λ + sqrt(V)) is built from the per-datum gradient ∇U/N
# (Li et al. 2016): G ≈ N/sqrt(V_U) ≈ 50 × 0.04 = 2 at the mode, so its effective step
# εG is about twice SGLD's (ε = 1e-2 / N gives the chain of ε = 1e-2 with V built from ∇U)
KERNELS = {
    "SGLD": lambda m, scale, init: SGLD(m, step_size=2e-4 * scale, thin=10,
                                        initial_params=init),
    "pSGLD": lambda m, scale, init: PreconditionedSGLD(m, step_size=2e-4 * scale, thin=10,
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
        # ε = 2e-3 / N (N = 768): the per-datum preconditioner is N times larger
        "pSGLD": lambda m: PreconditionedSGLD(m, step_size=2.6e-6, thin=10),
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
    assert PolynomialDecay(1.0, 1.0, 1.0)(3) == pytest.approx(0.25)
    with pytest.warns(UserWarning, match="do not sum"):
        assert PolynomialDecay(1.0, 1.0, 0.5)(3) == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="shrink too fast"):
        PolynomialDecay(1.0, 1.0, 1.5)
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


# --- issue 11/16: conventions, guards, chains, counters ---------------------------------
def test_psgld_preconditioner_is_built_from_the_per_datum_gradient():
    """Li et al. (2016, algorithm 1): V averages (∇U / N)², N the data plate's size."""
    target = gaussian_target(2, 0.5)
    kernel = PreconditionedSGLD(target, step_size=1e-4, initial_params={"theta": torch.zeros(2)})
    pyro.set_rng_seed(9)
    kernel.setup(0)
    assert kernel.data_size == 50
    pyro.set_rng_seed(10)
    _, grad = kernel.potential.value_and_grad(kernel.initial_params)
    pyro.set_rng_seed(10)
    kernel.sample(kernel.initial_params)
    torch.testing.assert_close(kernel.state["square_avg"]["theta"], (grad["theta"] / 50) ** 2)


class LinearPush(torch.nn.Module):
    """θ ~ N(0, 1) plus a factor c θ: at θ = 0 the potential is finite (0), and a large
    enough step overflows the float32 update."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self):
        theta = pyro.sample("theta", pyro.distributions.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.factor("push", -self.c * theta.sum())


@pytest.mark.parametrize("make, c, quantity", [
    (lambda m, s: SGLD(m, 10.0, require_subsample=False, initial_params=s), 3e38,
     "parameter 'theta'"),
    (lambda m, s: PreconditionedSGLD(m, 1e39, require_subsample=False, initial_params=s),
     1.0, "parameter 'theta'"),
    (lambda m, s: SGHMC(m, 2.0, friction=0.1, require_subsample=False, initial_params=s),
     3e38, "momentum of 'theta'"),
], ids=["SGLD", "pSGLD", "SGHMC"])
def test_guard_checks_parameters_and_momentum_after_each_update(make, c, quantity):
    """The last update's parameters are never fed to the potential: the guard on the
    parameters (and momentum) is what catches them."""
    kernel = make(LinearPush(c), {"theta": torch.zeros(1)})
    with pytest.raises(NonFiniteError, match=f"{quantity}.* at update 0 of chain 0 "
                                             r"\(step size"):
        MCMC(kernel, num_samples=1, warmup_steps=0, disable_progbar=True).run()


@pytest.mark.parametrize("make", [
    lambda m: SGLD(m, 1e3),
    lambda m: PreconditionedSGLD(m, 10.0),
    lambda m: SGHMC(m, 0.05, friction=10),
    lambda m: StructuredSGMCMC(PreconditionedSGLD(m, 10.0), groups="layer"),
], ids=["SGLD", "pSGLD", "SGHMC", "structured-pSGLD"])
def test_every_kernel_raises_when_it_diverges(make):
    X, y = torch.randn(50, 3), torch.randn(50)
    pyro.set_rng_seed(11)
    kernel = make(BayesianMLP(3, (4,), 1, subsample_size=10))
    with pytest.raises(NonFiniteError, match=r"at update \d+ of chain 0 \(step size"):
        MCMC(kernel, num_samples=300, warmup_steps=0, disable_progbar=True).run(X, y)


def test_structured_kernel_reports_its_own_counter():
    X, y = torch.randn(60, 3), torch.randn(60)
    schedule = PolynomialDecay(1e-4, 1.0, 0.55)
    kernel = StructuredSGMCMC(SGLD(BayesianMLP(3, (4,), 1, subsample_size=10), schedule),
                              groups="layer")
    pyro.set_rng_seed(12)
    kernel.setup(0, X, y)
    params = kernel.initial_params
    for _ in range(7):
        params = kernel.sample(params)
    assert kernel.num_steps == 7
    assert kernel.logging()["step_size"] == schedule(6)


def test_structured_buffer_draws_differ_between_chains():
    X, y = torch.randn(60, 3), torch.randn(60)
    kernel = StructuredSGMCMC(SGLD(BayesianMLP(3, (4,), 1, subsample_size=10), 1e-4),
                              groups="layer")
    pyro.set_rng_seed(13)
    draws = []
    for chain in range(2):  # as pyro.infer.MCMC runs two chains in one process
        kernel.setup(0, X, y)
        assert kernel.chain == chain
        draws.append([kernel.buffer.rng.random() for _ in range(5)])
        kernel.cleanup()
    assert draws[0] != draws[1]


@pytest.mark.parametrize("dropout, per_update", [(None, 3 * 2), (0.5, 2)])
def test_structured_gradients_per_update(dropout, per_update):
    """Without dropout each of the 3 groups gets its own 2 composites; with dropout one
    masked composite serves every group it keeps (Alexos et al. 2022)."""
    X, y = torch.randn(60, 3), torch.randn(60)
    kernel = StructuredSGMCMC(SGLD(BayesianMLP(3, (4,), 1, subsample_size=10), 1e-4),
                              groups="layer", dropout=dropout, num_composites=2)
    pyro.set_rng_seed(14)
    kernel.setup(0, X, y)
    params = kernel.sample(kernel.initial_params)  # the buffer is empty: one gradient
    before = kernel.potential.evaluations
    for _ in range(20):
        params = kernel.sample(params)
    assert len(kernel.groups) == 3
    # with dropout, a composite that keeps no group (probability 0.5³) is skipped
    spent = (kernel.potential.evaluations - before) / 20
    assert spent == per_update if dropout is None else 1 <= spent <= per_update


def test_dropout_gradient_is_unbiased_for_each_group():
    """The inverse-probability average over masked composites has the mean of the
    per-group composite gradient (here a quadratic potential: composites change the
    gradient of the other groups only through their values, so with a buffer holding
    the current state both equal ∇U)."""
    target = gaussian_target(2, 0.0)
    kernel = StructuredSGMCMC(SGLD(target, 1e-4, initial_params={"theta": torch.ones(2)}),
                              groups={"theta": torch.tensor([0, 1])}, dropout=0.5,
                              num_composites=2)
    pyro.set_rng_seed(15)
    kernel.setup(0)
    params = kernel.initial_params
    kernel.buffer.add(params)
    n = 100
    full = torch.stack([kernel.potential.value_and_grad(params)[1]["theta"] for _ in range(n)])
    structured = torch.stack([kernel.structured_gradient(params, 1e-4)["theta"]
                              for _ in range(n)])
    se = (structured.var(0) / n + full.var(0) / n).sqrt()
    assert ((structured.mean(0) - full.mean(0)).abs() < 4 * se).all()


def test_first_draw_after_warmup_reports_its_own_update():
    """Issue 11: with 30 warm-up draws and thin = 2 the first draw is update 61."""
    X, y = torch.randn(60, 3), torch.bernoulli(torch.full((60,), 0.5))
    schedule = PolynomialDecay(1e-3, 1.0, 0.55)
    kernel = SGLD(BayesianLogisticRegression(3, subsample_size=20), schedule, thin=2)
    pyro.set_rng_seed(16)
    mcmc = MCMC(kernel, num_samples=10, warmup_steps=30, disable_progbar=True)
    mcmc.run(X, y)
    stats = to_inference_data(mcmc).sample_stats
    assert stats["update"].values[0, 0] == 61
    assert stats["step_size"].values[0, 0] == schedule(61)
    assert az.from_pyro(mcmc).sample_stats["diverging"].shape == (1, 10)


def test_chains_of_one_run_start_from_their_own_prior_draws():
    X, y = torch.randn(60, 3), torch.bernoulli(torch.full((60,), 0.5))
    pyro.set_rng_seed(17)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="num_chains=.*available_cpu")
        mcmc = MCMC(SGLD(BayesianLogisticRegression(3, subsample_size=20), 1e-12),
                    num_samples=2, warmup_steps=0, num_chains=2, disable_progbar=True)
        mcmc.run(X, y)
    first = mcmc.get_samples(group_by_chain=True)["weight"][:, 0]
    assert (first[0] - first[1]).abs().max() > 1e-3


def test_targets_of_the_wrong_shape_are_refused():
    X, y = torch.randn(60, 3), torch.randn(60)
    with pytest.raises(ValueError, match=r"y must have shape \[N\] .* got \(60, 1\)"):
        BayesianMLP(3, (4,), 1)(X, y[:, None])
    pyro.set_rng_seed(18)
    mcmc = MCMC(SGLD(BayesianMLP(3, (4,), 1, subsample_size=20), 1e-4), num_samples=5,
                warmup_steps=0, disable_progbar=True)
    mcmc.run(X, y)
    with pytest.raises(ValueError, match=r"y must have shape \[N\] .* got \(10, 1\)"):
        to_inference_data(mcmc, X[:10], y[:10, None])


def test_classification_metrics_read_a_bernoulli_models_probability_of_class_one():
    """A Bernoulli model's predictive mean is P(y = 1), [C, D, N]; the same predictions
    as two-class probabilities [C, D, N, 2] must give the same metrics."""
    from posterity.infer.sgmcmc.predictive import classification_metrics

    p = torch.rand(2, 5, 40, generator=torch.Generator().manual_seed(0))
    y = (torch.rand(40, generator=torch.Generator().manual_seed(1)) < 0.5).long()
    log_lik = torch.zeros(2, 5, 40)
    binary = classification_metrics({"mean": p, "log_likelihood": log_lik}, y)
    two_class = classification_metrics(
        {"mean": torch.stack([1 - p, p], -1), "log_likelihood": log_lik}, y)
    assert binary == pytest.approx(two_class)
    assert binary["accuracy"] == pytest.approx(float(((p.mean((0, 1)) > 0.5) == y).float().mean()))


def test_pointwise_predictive_names_what_a_model_without_subsample_needs():
    import pyro.distributions as dist

    from posterity.infer.sgmcmc.predictive import pointwise_predictive

    def regression(X, y=None):  # written as docs/families/sgmcmc.md's example
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0], subsample_size=4) as idx:
            pyro.sample("y", dist.Normal(X[idx] @ w, 1.0), obs=None if y is None else y[idx])

    samples = {"w": torch.zeros(1, 3, 2)}
    with pytest.raises(TypeError, match=r"calls model\(X, y, subsample=False\), which "
                                        r"function does not take .*to_inference_data"):
        pointwise_predictive(regression, samples, torch.zeros(8, 2))
