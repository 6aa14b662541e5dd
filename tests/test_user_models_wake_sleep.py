"""A user-written sigmoid belief net (its own site names, no density protocol) through
every wake-sleep algorithm, and float64 runs of the built-in and the user programs."""

import math
import warnings

import pyro
import pytest
import torch
from user_models.sbn_models import CauseFeatureImage, ImageFeatureCause, simulated_images

from posterity.infer import WakeSleep, log_likelihood
from posterity.infer.wake_sleep import ALGORITHMS, helmholtz_machine


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_user_belief_net_learns_with_every_algorithm(algorithm):
    """Fifty updates at the algorithm's defaults raise the held-out log-likelihood far
    beyond the Monte Carlo error of the two estimates."""
    data = simulated_images(600, seed=1)
    train, held_out = data[:500], data[500:]
    pyro.set_rng_seed(2)
    model, guide = CauseFeatureImage(), ImageFeatureCause()
    engine = WakeSleep(model, guide, algorithm=algorithm, num_particles=5)
    before = log_likelihood(model, guide, held_out, 200, return_stderr=True, progress=False)
    engine.fit(train, epochs=5, batch_size=50, progress=False)
    after = log_likelihood(model, guide, held_out, 200, return_stderr=True, progress=False)
    gain = after[0].mean() - before[0].mean()
    stderr = math.sqrt((before[1].pow(2).sum() + after[1].pow(2).sum()) / 100**2)
    assert gain > 1.0 and gain > 10 * stderr, (gain, stderr)
    if engine.natural:  # the hooks found every nn.Linear of both programs
        assert set(engine.preconditioner.factors) == {
            model.feature_net, model.image_net, guide.encode_feature, guide.encode_cause}


def _float64_pair(kind: str):
    if kind == "built-in":
        model, guide = helmholtz_machine((16, 6, 3))
    else:
        model, guide = CauseFeatureImage(), ImageFeatureCause()
    return model.double(), guide.double()


@pytest.mark.parametrize("kind", ["built-in", "user"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float64_programs_train_and_return_float64(algorithm, kind):
    data = simulated_images(120, seed=3, dtype=torch.float64)
    pyro.set_rng_seed(4)
    model, guide = _float64_pair(kind)
    engine = WakeSleep(model, guide, algorithm=algorithm, num_particles=4, refresh_every=2)
    history = engine.fit(data, epochs=2, batch_size=30, progress=False)
    assert all(math.isfinite(v) for v in history.steps["loss"])
    assert all(p.dtype == torch.float64 for p in engine.parameters())
    log_partition = None
    if engine.bidirectional:
        log_partition, stderr = engine.log_partition(num_samples=50, num_particles=20)
        assert math.isfinite(log_partition) and math.isfinite(stderr)
    values = engine.log_likelihood(data[:10], num_samples=50, log_partition=log_partition)
    assert values.dtype == torch.float64 and values.shape == (10,)
    if engine.natural:
        assert all(f.inverse.dtype == torch.float64
                   for f in engine.preconditioner.factors.values())


def test_natural_algorithm_with_an_adaptive_optimizer_warns():
    model, guide = CauseFeatureImage(), ImageFeatureCause()
    with pytest.warns(UserWarning, match="discards the step sizes"):
        WakeSleep(model, guide, algorithm="nrws", optimizer="adam")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WakeSleep(model, guide, algorithm="nrws")  # the default, SGD, is silent
        WakeSleep(model, guide, algorithm="rws", optimizer="adam")


def test_a_user_model_without_sample_gets_ancestral_model_samples():
    """``to_inference_data`` draws a user program's observed site ancestrally: per pixel
    the frequency of ones matches the model's exact marginal, found by enumerating
    the 2³ × 2⁶ latent configurations, within four binomial standard errors."""
    torch.manual_seed(0)
    model, guide = CauseFeatureImage(), ImageFeatureCause()
    with torch.no_grad():  # a non-trivial model: random weights, not the zero start
        for p in model.parameters():
            p.normal_(0, 1.5)
    engine = WakeSleep(model, guide, algorithm="rws", num_particles=5)
    draws = 2000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PSIS warnings of the untrained guide
        idata = engine.to_inference_data(simulated_images(8), num_samples=10,
                                         num_model_samples=draws)
    samples = torch.as_tensor(idata.model_samples["x"].values)
    assert samples.shape == (draws, 16) and set(samples.unique().tolist()) <= {0.0, 1.0}

    def configurations(n):
        return torch.tensor([[(i >> k) & 1 for k in range(n)] for i in range(2**n)],
                            dtype=torch.float32)

    causes, features = configurations(3), configurations(6)
    with torch.no_grad():
        p_cause = torch.distributions.Bernoulli(logits=model.cause_logits).log_prob(
            causes).sum(-1).exp()                                            # [8]
        p_feature = torch.distributions.Bernoulli(logits=model.feature_net(causes)[:, None]
                                                  ).log_prob(features).sum(-1).exp()  # [8, 64]
        pixel = torch.sigmoid(model.image_net(features))                     # [64, 16]
        marginal = (p_cause[:, None] * p_feature) @ pixel                    # [8, 16]
        marginal = marginal.sum(0)
    error = 4 * (marginal * (1 - marginal) / draws).sqrt()
    assert ((samples.mean(0) - marginal).abs() < error).all(), (samples.mean(0), marginal)
