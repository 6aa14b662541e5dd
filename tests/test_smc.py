"""State-space models and the particle filter, against exact Kalman answers.

The Kalman filter and RTS smoother are themselves checked against the joint Gaussian of
all states and observations. Particle-filter tolerances come from the spread of
independent replicate filters (their Monte Carlo error).
"""

import math

import arviz as az
import pyro
import pytest
import torch

from posterity.infer.smc import (
    PPG,
    PaRIS,
    ParticleFilter,
    ParticleGibbs,
    ScoreAscent,
    multinomial,
    residual,
    stratified,
    systematic,
)
from posterity.infer.smc.backward import exact_backward, rejection_backward
from posterity.infer.smc.particle_gibbs import backward_path
from posterity.models import ChaoticRNN, LinearGaussianSSM, StochasticVolatility


def lgssm(dim: int) -> LinearGaussianSSM:
    torch.manual_seed(dim)
    if dim == 1:
        return LinearGaussianSSM(1, 1, A=0.9, Q=0.5, C=1.0, R=1.0)
    return LinearGaussianSSM(dim, 2, A=0.8, Q=0.3, C=torch.randn(2, dim), R=0.5)


def joint_gaussian(ssm: LinearGaussianSSM, T: int):
    """Mean and covariance of (x_0..x_{T-1}) and the observation map, by brute force."""
    d, A = ssm.state_dim, ssm.A
    marginal = [ssm.P0]
    for _ in range(1, T):
        marginal.append(A @ marginal[-1] @ A.T + ssm.Q)
    cov = torch.zeros(T * d, T * d)
    for s in range(T):
        for t in range(s, T):
            block = torch.linalg.matrix_power(A, t - s) @ marginal[s]
            cov[t * d:(t + 1) * d, s * d:(s + 1) * d] = block
            cov[s * d:(s + 1) * d, t * d:(t + 1) * d] = block.T
    mean = torch.cat([torch.linalg.matrix_power(A, t) @ ssm.m0 for t in range(T)])
    return mean, cov, torch.block_diag(*[ssm.C] * T), torch.block_diag(*[ssm.R] * T)


@pytest.mark.parametrize("dim", [1, 3])
@torch.no_grad()
def test_kalman_and_rts_equal_the_joint_gaussian(dim):
    ssm, T = lgssm(dim), 6
    ys = ssm.simulate(T).observations
    mean, cov, C, R = joint_gaussian(ssm, T)
    y_cov = C @ cov @ C.T + R
    exact = torch.distributions.MultivariateNormal(C @ mean, y_cov).log_prob(ys.reshape(-1))
    torch.testing.assert_close(ssm.kalman_filter(ys)["log_likelihood"], exact)
    gain = cov @ C.T @ torch.linalg.inv(y_cov)
    post_mean = mean + gain @ (ys.reshape(-1) - C @ mean)
    post_cov = cov - gain @ C @ cov
    smoothed = ssm.rts_smoother(ys)
    d = dim
    torch.testing.assert_close(smoothed["mean"].reshape(-1), post_mean, atol=1e-5, rtol=1e-5)
    for t in range(T):
        block = slice(t * d, (t + 1) * d)
        torch.testing.assert_close(smoothed["cov"][t], post_cov[block, block],
                                   atol=1e-5, rtol=1e-5)
        if t:
            previous = slice((t - 1) * d, t * d)
            torch.testing.assert_close(smoothed["cross_cov"][t], post_cov[block, previous],
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [1, 3])
@torch.no_grad()
def test_evidence_ratio_has_mean_one(dim):
    ssm = lgssm(dim)
    pyro.set_rng_seed(0)
    ys = ssm.simulate(30).observations
    log_z = ssm.kalman_filter(ys)["log_likelihood"]
    ratios = torch.stack([
        (ParticleFilter(ssm, 100, progress=False).run(ys).log_evidence - log_z).exp()
        for _ in range(300)
    ])
    stderr = ratios.std() / math.sqrt(len(ratios))
    assert abs(ratios.mean() - 1) < 4 * stderr, (ratios.mean(), stderr)


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("scheme", ["systematic", "stratified", "multinomial", "residual"])
@torch.no_grad()
def test_filtering_means_match_kalman(dim, scheme):
    ssm = lgssm(dim)
    pyro.set_rng_seed(1)
    ys = ssm.simulate(30).observations
    exact = ssm.kalman_filter(ys)["mean"]
    runs = torch.stack([
        ParticleFilter(ssm, 1000, resampling=scheme, progress=False).run(ys).filter_mean
        for _ in range(20)
    ])
    stderr = runs.std(0) / math.sqrt(runs.shape[0])
    # 5 standard errors: a Bonferroni bound over the 30 x dim comparisons
    assert ((runs.mean(0) - exact).abs() < 5 * stderr).all()


@torch.no_grad()
def test_filtering_variances_match_kalman_for_a_state_far_from_zero():
    """A state near 1000 with variance 0.006: E[x²] - E[x]² in float32 cancelled to 0.
    The mean over 20 runs must be within 5 of its standard errors, plus the O(1/ESS)
    bias of a weighted variance (ESS >= N/2 between resamplings), of Kalman's."""
    ssm = LinearGaussianSSM(1, 1, A=1.0, Q=0.01, C=1.0, R=0.01, m0=1000.0, P0=1.0)
    pyro.set_rng_seed(3)
    ys = ssm.simulate(30).observations
    exact = ssm.kalman_filter(ys)["cov"].diagonal(dim1=-2, dim2=-1)
    N = 2000
    runs = torch.stack([ParticleFilter(ssm, N, progress=False).run(ys).filter_var
                        for _ in range(20)])
    stderr = runs.std(0) / math.sqrt(runs.shape[0])
    assert ((runs.mean(0) - exact).abs() < 5 * stderr + 2 * exact / N).all()


@pytest.mark.parametrize("scheme", [multinomial, stratified, systematic, residual])
def test_resampling_is_unbiased(scheme):
    weights = torch.tensor([0.05, 0.4, 0.15, 0.3, 0.1])
    pyro.set_rng_seed(2)
    counts = torch.stack([torch.bincount(scheme(weights), minlength=5) for _ in range(4000)])
    counts = counts.float()
    expected = 5 * weights
    stderr = counts.std(0) / math.sqrt(len(counts))
    assert ((counts.mean(0) - expected).abs() <= 4 * stderr + 1e-6).all()
    assert (counts.sum(1) == 5).all()


@pytest.mark.parametrize("scheme", [stratified, systematic])
def test_grid_schemes_are_the_inverse_cdf_at_their_points(scheme):
    """Counting the points below each C_j gives the ancestors a search would: the
    inverse CDF at (k + U_k) / N (stratified) or (k + u) / N (systematic), zero weights
    and all."""
    weights = torch.rand(1000) ** 3
    weights[::7] = 0.0
    for seed in range(20):
        torch.manual_seed(seed)
        ancestors = scheme(weights, 900)
        torch.manual_seed(seed)
        shape = (900,) if scheme is stratified else ()
        points = (torch.arange(900, dtype=torch.float64)
                  + torch.rand(shape, dtype=torch.float64)) / 900
        cdf = weights.double().cumsum(0) / weights.double().sum()
        assert torch.equal(ancestors, torch.searchsorted(cdf, points).clamp(max=999))


@torch.no_grad()
def test_missing_observations_only_when_asked():
    ssm = StochasticVolatility()
    ys = ssm.simulate(20).observations
    ys[5] = float("nan")
    with pytest.raises(ValueError, match="pass missing=True"):
        ParticleFilter(ssm, 50, progress=False).run(ys)
    result = ParticleFilter(ssm, 50, missing=True, progress=False).run(ys)
    assert torch.isfinite(result.log_evidence)


@torch.no_grad()
def test_missing_observation_is_skipped_exactly():
    ssm = lgssm(1)
    pyro.set_rng_seed(3)
    ys = ssm.simulate(10).observations
    gappy = ys.clone()
    gappy[4] = float("nan")
    # with no observation at t = 4, filtering there is prediction: A times the Kalman
    # filtering mean at t = 3
    runs = torch.stack([
        ParticleFilter(ssm, 2000, missing=True, progress=False).run(gappy).filter_mean[4]
        for _ in range(20)
    ])
    exact = ssm.kalman_filter(ys[:4])["mean"][-1] @ ssm.A.T  # predicted mean at t = 4
    assert (runs.mean(0) - exact).abs().max() < 5 * runs.std(0).max() / math.sqrt(20)


@torch.no_grad()
def test_smoothers_skip_missing_observations_exactly():
    """With NaN at two steps, PaRIS and particle Gibbs target the smoothing law given the
    remaining observations, which the Kalman/RTS recursions give exactly."""
    ssm = lgssm(1)
    pyro.set_rng_seed(15)
    ys = ssm.simulate(12).observations
    ys[[3, 8]] = float("nan")
    exact = ssm.rts_smoother(ys)["mean"]
    for engine in (PaRIS, PPG, ParticleGibbs, ScoreAscent):
        with pytest.raises(ValueError, match="pass missing=True"):
            if engine is PaRIS:
                engine(ssm, sum_of_states, 50, progress=False).run(ys)
            elif engine is PPG:
                engine(ssm, sum_of_states, 20, num_iters=2, burn_in=1, progress=False).run(ys)
            elif engine is ParticleGibbs:
                engine(ssm, 20, progress=False).run(ys, num_iters=1)
            else:
                engine(ssm, num_particles=20, progress=False).score(ys)
    runs = torch.stack([PaRIS(ssm, sum_of_states, 500, missing=True, progress=False)
                        .run(ys).estimate for _ in range(10)])
    stderr = runs.std(0) / math.sqrt(len(runs))
    assert ((runs.mean(0) - exact.sum(0)).abs() < 5 * stderr).all()
    result = ParticleGibbs(ssm, 50, missing=True, progress=False).run(
        ys, num_iters=200, num_chains=2)
    summary = az.summary(result.to_inference_data(burn_in=20), round_to="none")
    error = summary["mean"].values - exact[:, 0].numpy()
    assert (abs(error) < 5 * summary["mcse_mean"].values).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"num_particles": 1}, "num_particles must be >= 2"),
    ({"resampling": "fancy"}, "resampling must be one of"),
    ({"ess_threshold": 1.5}, "ess_threshold must be in"),
])
def test_bad_filter_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParticleFilter(StochasticVolatility(), **kwargs)


def test_observations_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"ys must have shape \[T, 2\]"):
        ParticleFilter(lgssm(3), 10, progress=False).run(torch.randn(5, 3))


def test_a_vector_of_scalar_observations_is_read_as_one_column():
    ssm = StochasticVolatility()
    ys = ssm.simulate(20).observations
    pyro.set_rng_seed(3)
    column = ParticleFilter(ssm, 50, progress=False).run(ys).log_evidence
    pyro.set_rng_seed(3)
    vector = ParticleFilter(ssm, 50, progress=False).run(ys[:, 0]).log_evidence
    assert float(vector) == float(column)
    with pytest.raises(ValueError, match=r"ys must have shape \[T, 2\].*got \(5,\)"):
        ParticleFilter(lgssm(3), 10, progress=False).run(torch.randn(5))


def test_filter_result_converts_to_inference_data():
    ssm = StochasticVolatility()
    result = ParticleFilter(ssm, 100, progress=False).run(ssm.simulate(25).observations)
    idata = result.to_inference_data()
    assert idata.filtering["ess"].shape == (25,)
    assert idata.filtering.attrs["log_evidence"] == pytest.approx(float(result.log_evidence))


def test_smoother_results_convert_to_inference_data():
    from posterity.infer.smc import PPG, PaRIS

    ssm = StochasticVolatility()
    ys = ssm.simulate(15).observations
    h = lambda x_prev, x, y, t: x  # noqa: E731
    assert PaRIS(ssm, h, 50, progress=False).run(ys).to_inference_data() \
        .smoothing["estimate"].shape == (1,)
    idata = PPG(ssm, h, 30, num_iters=6, burn_in=2, progress=False).run(ys).to_inference_data()
    assert idata.posterior["estimate"].shape == (1, 4, 1)
    assert idata.constant_data["path"].shape == (15, 1)


def test_report_shows_filtering_smoothing_and_learning():
    from posterity.infer.report import render
    from posterity.infer.smc import ParticleGibbs, ScoreAscent

    ssm = StochasticVolatility()
    ys = ssm.simulate(20).observations
    page = render(ParticleFilter(ssm, 50, progress=False).run(ys).to_inference_data())
    assert "Particle filter" in page and "filter ESS" in page
    paths = ParticleGibbs(ssm, 20, progress=False).run(ys, num_iters=5, num_chains=2)
    assert "Smoothed states" in render(paths.to_inference_data())
    learning = ScoreAscent(ssm, num_particles=20, progress=False).fit(ys, num_steps=3)
    idata = learning.to_inference_data()
    assert idata.training_history["mu"].shape == (3, 1)
    assert "Learned parameters" in render(idata)


@pytest.mark.parametrize("make", [lambda: lgssm(3), StochasticVolatility,
                                  lambda: ChaoticRNN(4, 3)])
@torch.no_grad()
def test_fast_paths_equal_the_declared_laws(make):
    ssm = make()
    d = ssm.state_dim
    x_prev, x = torch.randn(7, 1, d), torch.randn(1, 5, d)
    y = torch.randn(ssm.obs_dim)
    assert torch.allclose(ssm.transition_log_prob(x_prev, x, 3),
                          ssm.transition(x_prev, 3).log_prob(x), atol=1e-5)
    assert torch.allclose(ssm.emission_log_prob(x[0], y, 3),
                          ssm.emission(x[0], 3).log_prob(y), atol=1e-5)
    draws = ssm.sample_transition(x_prev[:2, 0].repeat(20_000, 1), 3).view(20_000, 2, d)
    law = ssm.transition(x_prev[:2, 0], 3)
    stderr = law.variance.sqrt() / math.sqrt(20_000)
    assert ((draws.mean(0) - law.mean).abs() < 5 * stderr).all()
    # the sample variance's standard error is about var * sqrt(2 / n)
    assert ((draws.var(0) / law.variance - 1).abs() < 5 * math.sqrt(2 / 20_000)).all()


def test_pyro_program_matches_the_protocol():
    ssm = lgssm(3)
    ys = ssm.simulate(4).observations
    trace = pyro.poutine.trace(ssm).get_trace(ys)
    assert [n for n in trace.nodes if n.startswith("x_")] == ["x_0", "x_1", "x_2", "x_3"]
    assert trace.nodes["y_2"]["is_observed"]


def test_cuda_particle_filter(cuda):
    ssm = StochasticVolatility().to(cuda)
    ys = ssm.simulate(30).observations
    result = ParticleFilter(ssm, 500, progress=False).run(ys)
    assert result.filter_mean.device.type == "cuda"


def test_cuda_smoothers_and_learning(cuda):
    from posterity.infer.smc import PPG, PaRIS, ParticleGibbs, ScoreAscent

    ssm = StochasticVolatility().to(cuda)
    ys = ssm.simulate(20).observations
    h = lambda x_prev, x, y, t: x  # noqa: E731
    assert PaRIS(ssm, h, 200, progress=False).run(ys).estimate.device.type == "cuda"
    assert PPG(ssm, h, 50, num_iters=3, burn_in=1,
               progress=False).run(ys).estimate.device.type == "cuda"
    paths = ParticleGibbs(ssm, 50, progress=False).run(ys, num_iters=3).paths
    assert paths.device.type == "cuda"
    ScoreAscent(ssm, num_particles=50, progress=False).fit(ys, num_steps=2)


# --- smoothing ----------------------------------------------------------------------------


def sum_of_states(x_prev, x, y, t):
    return x


def sum_of_lagged_products(x_prev, x, y, t):
    if x_prev is None:
        return x.new_zeros(x.shape[0], x.shape[1] ** 2)
    return (x.unsqueeze(-1) * x_prev.unsqueeze(-2)).flatten(-2)


def exact_functionals(ssm, ys):
    smoothed = ssm.rts_smoother(ys)
    m = smoothed["mean"]
    lagged = sum(smoothed["cross_cov"][t] + torch.outer(m[t], m[t - 1])
                 for t in range(1, len(m)))
    return m.sum(0), lagged.flatten()


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("backward", ["exact", "rejection"])
@torch.no_grad()
def test_paris_matches_rts(dim, backward):
    ssm = lgssm(dim)
    pyro.set_rng_seed(4)
    ys = ssm.simulate(20).observations
    sums, lagged = exact_functionals(ssm, ys)
    for h, exact in ((sum_of_states, sums), (sum_of_lagged_products, lagged)):
        num_particles = 500 if backward == "exact" else 1000  # exact costs O(N^2)
        runs = torch.stack([
            PaRIS(ssm, h, num_particles, backward=backward, progress=False).run(ys).estimate
            for _ in range(10)
        ])
        stderr = runs.std(0) / math.sqrt(len(runs))
        # PaRIS is biased by O(1/N); at N = 1000 that is far below 5 standard errors
        assert ((runs.mean(0) - exact).abs() < 5 * stderr).all(), (runs.mean(0), exact)


@torch.no_grad()
def test_rejection_backward_draws_the_exact_backward_kernel():
    ssm = lgssm(1)
    pyro.set_rng_seed(5)
    previous = torch.randn(6, 1)
    log_w = torch.log_softmax(torch.randn(6), 0)
    target = torch.zeros(20_000, 1)
    exact = torch.bincount(exact_backward(ssm, previous, log_w, target, 1), minlength=6)
    rejection = torch.bincount(rejection_backward(ssm, previous, log_w, target, 1,
                                                  exact_work=0),
                               minlength=6)
    probs = torch.softmax(log_w + ssm.transition(previous, 1).log_prob(target[:1]), 0)
    for counts in (exact, rejection):
        stderr = (probs * (1 - probs) / 20_000).sqrt()
        assert ((counts / 20_000 - probs).abs() < 5 * stderr).all()


@torch.no_grad()
def test_ffbs_marginals_match_rts():
    ssm = lgssm(3)
    pyro.set_rng_seed(6)
    ys = ssm.simulate(15).observations
    exact = ssm.rts_smoother(ys)["mean"]
    draws = []
    for _ in range(20):
        particles, log_weights = [], []
        for step in ParticleFilter(ssm, 500, progress=False).steps(ys):
            particles.append(step.particles)
            log_weights.append(step.log_weights)
        backward = lambda prev, w, x, t: exact_backward(ssm, prev, w, x, t)  # noqa: E731
        draws.append(torch.stack([backward_path(particles, log_weights, ssm, backward)
                                  for _ in range(20)]).mean(0))
    draws = torch.stack(draws)  # 20 independent filters, 20 backward paths each
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() < 5 * stderr).all()


@torch.no_grad()
def test_particle_gibbs_marginals_and_rhat(diagnostics_report):
    import arviz as az

    ssm = lgssm(1)
    pyro.set_rng_seed(7)
    ys = ssm.simulate(10).observations
    exact = ssm.rts_smoother(ys)
    # R-hat's own noise falls with the effective sample size: ~800 draws keep it well
    # below 1.01 for converged chains (at ~350 it ranged 1.005-1.017 over seeds)
    result = ParticleGibbs(ssm, 50, progress=False).run(ys, num_iters=1000, num_chains=4)
    idata = result.to_inference_data(burn_in=100)
    summary = az.summary(idata, round_to="none")
    assert (summary["r_hat"] < 1.01).all(), summary["r_hat"].max()
    sd = exact["cov"][:, 0, 0].sqrt().numpy()
    error = summary["mean"].values - exact["mean"][:, 0].numpy()
    assert (abs(error) < 4 * sd / summary["ess_bulk"].values ** 0.5).all()
    diagnostics_report.add("Particle Gibbs on a linear-Gaussian model (T = 10, N = 50)", idata,
                           "4 chains of 1000 sweeps, 100 burn-in; exact RTS marginals are the "
                           "reference")


@pytest.mark.slow
@torch.no_grad()
def test_ppg_removes_the_bias_that_averaging_paris_keeps():
    """Cardoso et al. (2023): at small N, PPG's bias falls with its iterations, while
    averaging PaRIS runs of the same N keeps PaRIS's bias, which grows with the weight
    degeneracy of informative observations (R = 0.05, N = 4). Measured when written:
    PaRIS -1.91 +- 0.17, PPG -0.19 +- 0.09 against the exact 30-step sum."""
    torch.manual_seed(1)
    ssm = LinearGaussianSSM(1, 1, A=0.9, Q=0.5, C=1.0, R=0.05)
    pyro.set_rng_seed(9)
    ys = ssm.simulate(30).observations
    exact = float(exact_functionals(ssm, ys)[0])
    N, iters, burn_in, replicates = 4, 40, 8, 30
    ppg = torch.stack([
        PPG(ssm, sum_of_states, N, num_iters=iters, burn_in=burn_in,
            progress=False).run(ys).estimate[0]
        for _ in range(replicates)
    ])
    paris = torch.stack([  # equal compute: one PaRIS run per PPG sweep
        PaRIS(ssm, sum_of_states, N, progress=False).run(ys).estimate[0]
        for _ in range(replicates * iters)
    ])
    ppg_bias, ppg_se = float(ppg.mean()) - exact, float(ppg.std()) / math.sqrt(len(ppg))
    paris_bias, paris_se = float(paris.mean()) - exact, float(paris.std()) / math.sqrt(len(paris))
    assert abs(ppg_bias) < 4 * ppg_se
    assert abs(paris_bias) - abs(ppg_bias) > 3 * math.hypot(ppg_se, paris_se), \
        (ppg_bias, ppg_se, paris_bias, paris_se)


@pytest.mark.parametrize("make, message", [
    (lambda s: PaRIS(s, sum_of_states, 10, num_backward=0), "num_backward must be >= 1"),
    (lambda s: PPG(s, sum_of_states, 10, num_iters=5, burn_in=5), "burn_in .* must be < num_iters"),
    (lambda s: PaRIS(s, sum_of_states, 1), "num_particles must be >= 2"),
    (lambda s: ParticleGibbs(s, 1), "num_particles must be >= 2"),
])
def test_bad_smoother_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make(StochasticVolatility())


# --- learning -----------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["paris", "ppg"])
def test_score_matches_autograd_of_the_kalman_likelihood(estimator):
    ssm = lgssm(1)
    pyro.set_rng_seed(10)
    with torch.no_grad():
        ys = ssm.simulate(30).observations
    params = dict(ssm.named_parameters())
    exact = torch.autograd.grad(ssm.kalman_filter(ys)["log_likelihood"], list(params.values()))
    estimates = []
    for _ in range(10):  # independent estimates (PPG: independent chains after burn-in)
        learner = ScoreAscent(ssm, estimator=estimator, num_particles=300, progress=False)
        if estimator == "ppg":
            for _ in range(3):
                with torch.no_grad():
                    learner.objective(ys)
        estimates.append(learner.score(ys))
    for (name, _), truth in zip(params.items(), exact):
        draws = torch.stack([e[name].flatten() for e in estimates])
        stderr = draws.std(0) / math.sqrt(len(draws))
        assert ((draws.mean(0) - truth.flatten()).abs() < 5 * stderr + 1e-4).all(), name


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["paris", "ppg"])
def test_score_ascent_recovers_the_kalman_mle(estimator):
    torch.manual_seed(11)
    truth = LinearGaussianSSM(1, 1, A=0.7, Q=0.5, C=1.0, R=0.5)
    with torch.no_grad():
        ys = truth.simulate(100).observations
    # exact MLE of A, the others held at their true values: a 1-D search on Kalman
    grid = torch.linspace(0.3, 0.99, 691)
    values = []
    with torch.no_grad():
        for a in grid:
            truth.A.fill_(float(a))
            values.append(float(truth.kalman_filter(ys)["log_likelihood"]))
    mle = float(grid[int(torch.tensor(values).argmax())])
    ssm = LinearGaussianSSM(1, 1, A=0.3, Q=0.5, C=1.0, R=0.5)
    for name, p in ssm.named_parameters():
        p.requires_grad_(name == "A")
    pyro.set_rng_seed(12)
    result = ScoreAscent(ssm, estimator=estimator, num_particles=100, lr=0.01,
                         progress=False).fit(ys, num_steps=300)
    tail = result.history["A"][150:, 0]
    # the iterates fluctuate around the MLE: their mean within 4 stationary sds (plus the
    # grid's resolution)
    assert abs(float(tail.mean()) - mle) < 4 * float(tail.std()) + 1e-3, (tail.mean(), mle)


def test_score_ascent_fits_the_chaotic_rnn():
    """On the non-linear model, climbing the PaRIS score raises the (independently
    estimated) log-evidence by more than the evidence estimates' Monte Carlo error."""
    pyro.set_rng_seed(13)
    truth = ChaoticRNN(state_dim=3, obs_dim=3, seed=0)
    with torch.no_grad():
        ys = truth.simulate(40).observations
    ssm = ChaoticRNN(state_dim=3, obs_dim=3, seed=1)

    def log_evidence_and_stderr() -> tuple[float, float]:
        runs = torch.stack([ParticleFilter(ssm, 300, progress=False).run(ys).log_evidence
                            for _ in range(6)])
        return float(runs.mean()), float(runs.std() / math.sqrt(len(runs)))

    before, before_err = log_evidence_and_stderr()
    result = ScoreAscent(ssm, num_particles=100, lr=0.03, progress=False).fit(ys, 25)
    after, after_err = log_evidence_and_stderr()
    assert set(result.history) == {"W", "B", "log_transition_scale", "log_observation_scale"}
    assert after - before > 4 * math.hypot(before_err, after_err), (before, after)


# --- peer: the `particles` library ------------------------------------------------------
def particles_stochastic_volatility(mu: float, phi: float, sigma: float):
    from particles import state_space_models

    class StochVol(state_space_models.StochVol):
        def upper_bound_log_pt(self, t):
            return -0.5 * math.log(2 * math.pi) - math.log(self.sigma)

    return StochVol(mu=mu, rho=phi, sigma=sigma)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_filter_and_paris_agree_with_the_particles_library():
    """Same model, N, resampling scheme and ESS threshold: the log-evidence and the PaRIS
    estimate of E[Σ x_t | y] have the same law, so replicate means agree within their
    Monte Carlo error."""
    import numpy as np
    import particles
    from particles import collectors, state_space_models

    mu, phi, sigma, N, replicates = -1.0, 0.95, 0.3, 50, 10
    pyro.set_rng_seed(14)
    ssm = StochasticVolatility(mu, phi, sigma)
    ys = ssm.simulate(25).observations
    peer_model = particles_stochastic_volatility(mu, phi, sigma)
    np.random.seed(14)
    peer_evidence, peer_smoothed = [], []
    for _ in range(replicates):
        fk = state_space_models.Bootstrap(ssm=peer_model, data=ys[:, 0].double().numpy())
        fk.add_func = lambda t, xp, x: x
        run = particles.SMC(fk=fk, N=N, resampling="systematic", ESSrmin=0.5,
                            collect=[collectors.Paris(Nparis=2)])
        run.run()
        peer_evidence.append(run.logLt)
        peer_smoothed.append(run.summaries.paris[-1])
    ours_evidence, ours_smoothed = [], []
    for _ in range(replicates):
        ours_evidence.append(float(ParticleFilter(ssm, N, progress=False).run(ys).log_evidence))
        ours_smoothed.append(float(PaRIS(ssm, sum_of_states, N, ess_threshold=0.5,
                                         progress=False)
                                   .run(ys).estimate.sum()))

    for peer, ours in ((peer_evidence, ours_evidence), (peer_smoothed, ours_smoothed)):
        peer, ours = torch.tensor(peer, dtype=torch.float64), torch.tensor(ours).double()
        stderr = math.sqrt((peer.var() + ours.var()) / replicates)
        assert abs(float(peer.mean() - ours.mean())) < 4 * stderr, (peer.mean(), ours.mean())


# --- batched chains, checked bounds, numerics, the shared training loop -------------------


@torch.no_grad()
def test_batched_rejection_backward_draws_each_systems_kernel():
    """Two independent particle systems in one call: each target's index follows its own
    system's backward kernel."""
    ssm = lgssm(1)
    pyro.set_rng_seed(16)
    previous = torch.randn(2, 6, 1)
    log_w = torch.log_softmax(torch.randn(2, 6), -1)
    targets = torch.tensor([[0.0], [1.5]]).unsqueeze(1).expand(2, 20_000, 1)
    for kernel in (lambda: exact_backward(ssm, previous, log_w, targets, 1),
                   lambda: rejection_backward(ssm, previous, log_w, targets, 1, exact_work=0)):
        indices = kernel()
        assert indices.shape == (2, 20_000)
        for b in range(2):
            probs = torch.softmax(log_w[b] + ssm.transition(previous[b], 1)
                                  .log_prob(targets[b, :1]), 0)
            counts = torch.bincount(indices[b], minlength=6) / 20_000
            stderr = (probs * (1 - probs) / 20_000).sqrt()
            assert ((counts - probs).abs() < 5 * stderr + 1e-4).all(), (b, counts, probs)


@torch.no_grad()
def test_particle_gibbs_chains_are_batched_and_start_apart():
    ssm = StochasticVolatility()
    pyro.set_rng_seed(17)
    ys = ssm.simulate(15).observations
    seen = []
    result = ParticleGibbs(ssm, 20, progress=False).run(
        ys, num_iters=10, num_chains=3, callback=lambda c, i, path: seen.append((c, i)))
    assert result.paths.shape == (3, 10, 15, 1)
    assert len(seen) == 30 and seen[:3] == [(0, 0), (1, 0), (2, 0)]
    first = result.paths[:, 0]
    assert (first[0] != first[1]).any() and (first[1] != first[2]).any()
    assert result.burn_in == 2  # the default, num_iters // 5, kept for to_inference_data
    assert result.to_inference_data().posterior["x"].shape == (3, 8, 15, 1)
    assert result.to_inference_data(burn_in=0).posterior["x"].shape == (3, 10, 15, 1)


@torch.no_grad()
def test_filter_warns_when_the_ess_collapses_and_names_the_time_step():
    ssm = StochasticVolatility()
    pyro.set_rng_seed(18)
    ys = ssm.simulate(20).observations
    ys[10] = 1e6  # the outlier of issue 16: log-weights of order -1e12
    with pytest.warns(RuntimeWarning, match="collapsed to 1.00 of 500 particles at time step 10"):
        ParticleFilter(ssm, 500, progress=False).run(ys)


@torch.no_grad()
def test_float32_overflow_is_named_as_such():
    ssm = StochasticVolatility()
    ys = ssm.simulate(20).observations
    ys[7] = 1e20  # finite in float32, but y² overflows
    with pytest.raises(FloatingPointError, match=r"time step 7: .*overflows torch.float32 "
                                                 r"when squared.*ssm.double\(\)"):
        ParticleFilter(ssm, 100, progress=False).run(ys)
    result = ParticleFilter(StochasticVolatility().double(), 100, progress=False).run(
        ys.double())
    assert result.log_evidence.dtype == torch.float64


def test_every_result_converts_without_arguments():
    ssm = StochasticVolatility()
    ys = ssm.simulate(10).observations
    results = [
        ParticleFilter(ssm, 30, progress=False).run(ys),
        PaRIS(ssm, sum_of_states, 30, progress=False).run(ys),
        ParticleGibbs(ssm, 10, progress=False).run(ys, num_iters=5, num_chains=2),
        PPG(ssm, sum_of_states, 10, num_iters=3, burn_in=1, progress=False).run(ys),
        ScoreAscent(ssm, num_particles=10, progress=False).fit(ys, num_steps=2),
    ]
    groups = [list(result.to_inference_data().groups()) for result in results]
    assert groups == [["filtering"], ["smoothing"], ["posterior"], ["posterior", "constant_data"],
                      ["training_history"]]


def test_score_ascent_ppg_runs_burn_in_and_sweeps_per_update(monkeypatch):
    ssm = StochasticVolatility()
    ys = ssm.simulate(10).observations
    learner = ScoreAscent(ssm, "ppg", num_particles=10, sweeps_per_update=3, burn_in=2,
                          max_trials=5, progress=False)
    calls = []
    original = learner._sweep
    monkeypatch.setattr(learner, "_sweep",
                        lambda ys: calls.append(torch.is_grad_enabled()) or original(ys))
    learner.fit(ys, num_steps=2)
    # per update: 2 path moves without gradient, then 3 scored sweeps
    assert calls == [False, False, True, True, True] * 2
    assert learner.backward.max_trials == 5


def test_score_ascent_resumes_exactly_from_a_checkpoint(tmp_path):
    """Through the shared loop: 2 updates, a checkpoint, 2 more in a fresh engine give the
    parameters and history of 4 uninterrupted updates, bit for bit."""
    ys = StochasticVolatility().simulate(12).observations

    def learner():
        return ScoreAscent(StochasticVolatility(), "ppg", num_particles=10, progress=False)

    straight = learner()
    straight.fit(ys, num_steps=4, seed=3)
    first = learner()
    first.fit(ys, num_steps=2, seed=3, checkpoint=tmp_path / "sa.pt", checkpoint_every=1)
    resumed = learner()
    result = resumed.fit(ys, num_steps=4, seed=3, checkpoint=tmp_path / "sa.pt")
    for (name, a), b in zip(straight.ssm.named_parameters(), resumed.ssm.parameters()):
        assert torch.equal(a, b), name
    assert result.objective == straight.history.steps["objective"]
    assert result.history["mu"].shape == (4, 1)
    from posterity.infer.checkpoints import CheckpointMismatchError

    for other in (ys[:10], ys.flip(0)):  # another length, other values
        with pytest.raises(CheckpointMismatchError, match="data_digest"):
            learner().fit(other, num_steps=6, seed=3, checkpoint=tmp_path / "sa.pt")


def test_score_ascent_stops_on_a_non_finite_objective():
    from posterity.infer import NonFiniteError

    ssm = StochasticVolatility()
    ys = ssm.simulate(8).observations
    learner = ScoreAscent(ssm, num_particles=10, progress=False)
    with torch.no_grad():
        ssm.log_sigma.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="log_sigma hold NaN or Inf before update 1"):
        learner.fit(ys, num_steps=2)


def test_building_an_engine_leaves_the_learned_parameters_as_chosen():
    """Checking the model traces its Pyro program; that must not turn ``requires_grad``
    back on for parameters the user froze (score ascent would then learn them)."""
    ssm = LinearGaussianSSM(1, 1, A=0.3, Q=0.5, C=1.0, R=0.5)
    for name, p in ssm.named_parameters():
        p.requires_grad_(name == "A")
    ScoreAscent(ssm, num_particles=10, progress=False)
    assert {n for n, p in ssm.named_parameters() if p.requires_grad} == {"A"}
