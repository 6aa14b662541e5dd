"""Importance-sampled log-likelihood against the analytic log p(x) of probabilistic PCA.

Tolerances come from the Monte Carlo error: each estimate carries the delta-method
standard error of log p̂ computed from its own weights, and data points are independent.
"""

import math

import pyro
import pytest
import torch
from programs import PosteriorProposal, second_moment_is_finite

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, log_likelihood, rate_distortion
from posterity.infer.amortized.vi import objective_per_data_point
from posterity.infer.importance import weighted_particles
from posterity.models import LinearGaussianVAE

INFLATION, SHIFT = 1.6, 0.3


@pytest.fixture
def ppca():
    """A fixed W and data drawn from the model's marginal."""
    torch.manual_seed(11)
    model = LinearGaussianVAE(x_dim=6, z_dim=2, noise_scale=0.6, learn_noise=False)
    for p in model.parameters():
        p.requires_grad_(False)
    x = model.marginal().sample((2000,))
    assert second_moment_is_finite(model, x, INFLATION, SHIFT)
    return model, PosteriorProposal(model, INFLATION, SHIFT), x


def test_log_likelihood_matches_the_analytic_marginal(ppca, diagnostics_report):
    model, guide, x = ppca
    x = x[:200]
    pyro.set_rng_seed(0)
    estimate, stderr = log_likelihood(
        model, guide, x, num_samples=4000, chunk_size=1000, return_stderr=True, progress=False
    )
    exact = model.exact_log_likelihood(x)
    assert estimate.shape == (200,)
    z = (estimate - exact) / stderr
    # per point: |z| < 5 (Bonferroni over 200 points); in total: within 4 combined SEs
    assert z.abs().max() < 5
    assert abs((estimate - exact).sum()) < 4 * stderr.pow(2).sum().sqrt()
    from posterity.infer.amortized.inference_data import amortized_inference_data

    diagnostics_report.add(
        "pPCA: importance-sampled log p(x) vs analytic",
        amortized_inference_data(model, guide, x[:50], num_samples=500),
        f"max |z| = {z.abs().max():.2f} over 200 points; mean error "
        f"{(estimate - exact).mean():.4f} nats",
    )


def test_the_estimate_tightens_as_the_number_of_samples_grows(ppca):
    model, guide, x = ppca
    exact = model.exact_log_likelihood(x)
    gaps, noise = [], []
    for s in (1, 10, 100):
        pyro.set_rng_seed(s)
        error = exact - log_likelihood(model, guide, x, num_samples=s, progress=False)
        gaps.append(error.mean())
        noise.append(error.std() / math.sqrt(x.shape[0]))
    for i in range(2):
        margin = 3 * math.hypot(noise[i], noise[i + 1])
        assert gaps[i] - gaps[i + 1] > margin, (gaps, noise)
    assert gaps[-1] > -3 * noise[-1]  # still a lower bound in expectation


def test_iwae_bound_is_above_the_elbo(ppca):
    model, guide, x = ppca
    pyro.set_rng_seed(1)
    particles = weighted_particles(model, guide, (x,), num_particles=10, plate_nesting=1)
    difference = objective_per_data_point(particles, "iwae") - objective_per_data_point(
        particles, "elbo"
    )
    assert (difference >= -1e-5).all()  # Jensen, per data point and draw
    pyro.set_rng_seed(2)
    elbo = objective_per_data_point(
        weighted_particles(model, guide, (x,), num_particles=1, plate_nesting=1), "elbo"
    )
    pyro.set_rng_seed(3)
    iwae = objective_per_data_point(
        weighted_particles(model, guide, (x,), num_particles=10, plate_nesting=1), "iwae"
    )
    paired = iwae - elbo
    assert paired.mean() > 3 * paired.std() / math.sqrt(len(paired))


def test_chunking_does_not_change_the_estimate_beyond_its_error(ppca):
    model, guide, x = ppca
    x = x[:100]
    one, se_one = log_likelihood(
        model, guide, x, 500, chunk_size=500, return_stderr=True, progress=False
    )
    many, se_many = log_likelihood(
        model, guide, x, 500, chunk_size=37, batch_size=13, return_stderr=True, progress=False
    )
    assert abs((one - many).sum()) < 4 * (se_one.pow(2) + se_many.pow(2)).sum().sqrt()


def test_rate_is_the_kl_and_distortion_the_expected_negative_log_likelihood(ppca):
    model, _, x = ppca
    guide = GaussianEncoder(6, 2, hidden=())
    AmortizedVI(model, guide, objective="elbo", lr=1e-2).fit(
        x, epochs=3, batch_size=100, progress=False, seed=0
    )
    pyro.set_rng_seed(5)
    curve = rate_distortion(model, guide, x, num_samples=64, batch_size=500)
    # the same draws, by hand: the rate is the KL in closed form, the distortion the
    # draws' mean negative log-likelihood, and rate + distortion minus the ELBO
    pyro.set_rng_seed(5)
    by_hand = torch.cat([
        objective_per_data_point(
            weighted_particles(model, guide, (b,), num_particles=64, plate_nesting=1,
                               analytic_kl=True), "elbo"
        )
        for b in x.split(500)
    ])
    torch.testing.assert_close(curve.elbo, by_hand.mean(), rtol=0, atol=1e-4)
    with torch.no_grad():
        loc, scale = guide.posterior_params(x)
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1).mean()
        sampled = weighted_particles(model, guide, (x,), num_particles=64, plate_nesting=1)
    torch.testing.assert_close(curve.rate, kl, rtol=1e-5, atol=1e-5)
    # the single-draw rate estimates the same KL, within its Monte Carlo error
    stderr = sampled.log_density_ratio.std() / math.sqrt(sampled.log_density_ratio.numel())
    assert abs(float(-sampled.log_density_ratio.mean()) - float(kl)) < 4 * float(stderr)


def test_the_objective_of_each_beta_is_distortion_plus_beta_rate():
    from posterity.models import VAE

    model = VAE(10, 3, (8,), multi_rate=True)
    guide = GaussianEncoder(10, 3, (8,), multi_rate=True)
    x = torch.bernoulli(torch.full((30, 10), 0.4))
    curve = rate_distortion(model, guide, x, [0.1, 1.0, 5.0], num_samples=4)
    torch.testing.assert_close(curve.objective,
                               curve.distortion + torch.tensor([0.1, 1.0, 5.0]) * curve.rate)
    data = curve.to_dataset()
    assert sorted(data.data_vars) == ["distortion", "objective", "rate"]
    assert data["objective"].dims == ("beta",) and data.sizes["beta"] == 3


def test_reference_points_evaluate_one_pair_per_beta():
    from posterity.infer.amortized import reference_points
    from posterity.models import VAE

    x = torch.bernoulli(torch.full((30, 10), 0.4))
    pairs = {b: (VAE(10, 3, (8,)), GaussianEncoder(10, 3, (8,))) for b in (3.0, 0.5)}
    pyro.set_rng_seed(0)
    reference = reference_points(pairs, x, num_samples=4)
    pyro.set_rng_seed(0)
    first = rate_distortion(*pairs[0.5], x, num_samples=4)
    assert reference.beta.tolist() == [0.5, 3.0]
    torch.testing.assert_close(reference.rate[0], first.rate)
    with pytest.raises(TypeError, match="pairs\\[0.5\\] must be a \\(model, guide\\) tuple"):
        reference_points({0.5: pairs[0.5][0]}, x)
    with pytest.raises(ValueError, match="betas must be finite and > 0"):
        reference_points({-1.0: pairs[0.5]}, x)


@pytest.mark.parametrize("betas", [[], [0.1, -2.0], [float("nan")]])
def test_bad_betas_are_named(betas):
    from posterity.models import VAE

    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    with pytest.raises(ValueError, match="betas"):
        rate_distortion(model, guide, torch.bernoulli(torch.full((5, 10), 0.4)), betas)


def test_betas_need_a_multi_rate_pair_and_are_warned_about_outside_its_training_range(ppca):
    import warnings

    from posterity.models import VAE

    model, guide, data = ppca  # programs without a beta argument
    with pytest.raises(ValueError, match=r"the model \(LinearGaussianVAE\) takes no beta"):
        rate_distortion(model, guide, data[:5], [0.1, 1.0], num_samples=2)
    x = torch.bernoulli(torch.full((5, 10), 0.4))
    pair = (VAE(10, 3, (8,), multi_rate=True, beta_range=(0.1, 10.0)),
            GaussianEncoder(10, 3, (8,), multi_rate=True, beta_range=(0.1, 10.0)))
    with pytest.warns(UserWarning, match=r"betas 1e-05, 100 lie outside the range the pair "
                                         r"was trained on \[0.001, 10\]"):
        rate_distortion(*pair, x, [1e-5, 0.001, 100.0], num_samples=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rate_distortion(*pair, x, [0.001, 0.1, 10.0], num_samples=2)  # the ends are inside


def test_a_standard_error_needs_two_samples(ppca):
    model, guide, x = ppca
    with pytest.raises(ValueError, match="return_stderr=True needs num_samples >= 2"):
        log_likelihood(model, guide, x[:3], num_samples=1, return_stderr=True, progress=False)
