"""A user-written sigmoid belief net (its own site names, no density protocol) through
every wake-sleep algorithm, and float64 runs of the built-in and the user programs."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn
from user_models.sbn_models import CauseFeatureImage, ImageFeatureCause, simulated_images

from posterity.infer import WakeSleep, log_likelihood
from posterity.infer.importance import ObservedSitesError
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
    natural = {"refresh_every": 2} if algorithm in ("nrws", "nbihm") else {}
    engine = WakeSleep(model, guide, algorithm=algorithm, num_particles=4, **natural)
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


class GaussianCause(PyroModule):
    """``z ~ N(0, 1)``, ``x | z ~ N(z, 1)`` per data point: a continuous latent, no
    parameters of its own (the posterior is ``N(x / 2, 1 / 2)``)."""

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


class GaussianGuess(PyroModule):
    """``q(z | x) = N(a x + b, exp(s)²)``, reparameterized draws."""

    def __init__(self) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.zeros(1))
        self.shift = nn.Parameter(torch.ones(1))
        self.log_scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.slope * x + self.shift,
                                         self.log_scale.exp()).to_event(1))


def test_continuous_draws_are_taken_as_samples():
    """RWS's guide update is ``Σ_k w̃_k ∇φ log q(z_k | x)`` with the draws held fixed,
    and the model's update does not reach the guide. With reparameterized draws left
    attached, ``∂ log q(z(φ) | x) / ∂ mean`` is 0 and the guide's mean never moved."""
    pyro.set_rng_seed(0)
    x = 2 * torch.randn(64, 1, dtype=torch.float64)
    model, guide = GaussianCause(), GaussianGuess().double()
    engine = WakeSleep(model, guide, algorithm="rws", num_particles=10, insomnia=1.0)
    engine.prepare(x)
    losses = engine.losses(x)
    assert not losses["model_loss"].requires_grad  # the model has no parameters of its own
    shift_grad = torch.autograd.grad(losses["guide_loss"], guide.shift)[0]
    assert shift_grad.abs().item() > 0.1  # the mean starts 1 away from the posterior's


def test_rws_learns_the_exact_posterior_of_a_continuous_latent():
    """The exact posterior ``N(x / 2, 1 / 2)`` is the fixed point of RWS's wake update
    for any K (its weights are then all equal). After 800 updates (Adam, lr 1e-2) the
    guide's three parameters are within 0.06 of it: Adam moves each by at most about
    lr per update, and the noise of the K = 20 weights averages over 200 points."""
    pyro.set_rng_seed(1)
    x = 2 ** 0.5 * torch.randn(200, 1, dtype=torch.float64)  # the model's marginal
    model, guide = GaussianCause(), GaussianGuess().double()
    engine = WakeSleep(model, guide, algorithm="rws", num_particles=20, insomnia=1.0)
    engine.fit(x, epochs=800, batch_size=200, progress=False)
    assert guide.slope.item() == pytest.approx(0.5, abs=0.06)
    assert guide.shift.item() == pytest.approx(0.0, abs=0.06)
    assert guide.log_scale.exp().item() ** 2 == pytest.approx(0.5, abs=0.06)


class TwoObserved(PyroModule):
    """Two observed sites under one latent cause."""

    def __init__(self) -> None:
        super().__init__()
        self.left_net, self.right_net = nn.Linear(3, 4), nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            h = pyro.sample("h", dist.Bernoulli(logits=x.new_zeros(3)).to_event(1))
            pyro.sample("left", dist.Bernoulli(logits=self.left_net(h)).to_event(1),
                        obs=x[:, :4])
            pyro.sample("right", dist.Bernoulli(logits=self.right_net(h)).to_event(1),
                        obs=x[:, 4:])


class TwoObservedGuide(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("h", dist.Bernoulli(logits=self.net(x)).to_event(1))


def test_a_sleep_phase_needs_one_observed_site_and_says_so_before_training():
    x = torch.bernoulli(torch.full((20, 8), 0.5))
    for algorithm in ("ws", "rws", "nrws"):
        engine = WakeSleep(TwoObserved(), TwoObservedGuide(), algorithm=algorithm)
        with pytest.raises(ObservedSitesError, match=r"observes \['left', 'right'\]"):
            engine.fit(x, epochs=1, progress=False)
        assert engine.num_steps == 0
    for algorithm, options in (("nrws", {"insomnia": 1.0}), ("nbihm", {})):
        engine = WakeSleep(TwoObserved(), TwoObservedGuide(), algorithm=algorithm, **options)
        with pytest.raises(ObservedSitesError, match="use fisher_weights='importance'"):
            engine.fit(x, epochs=1, progress=False)
    for algorithm, options in (("rws", {"insomnia": 1.0}), ("bihm", {}),
                               ("nbihm", {"fisher_weights": "importance"})):
        engine = WakeSleep(TwoObserved(), TwoObservedGuide(), algorithm=algorithm, **options)
        engine.fit(x, epochs=1, batch_size=10, progress=False)
        assert engine.num_steps == 2


class ModuleListNet(PyroModule):
    """A belief net that keeps its linear maps in ``self.layers``, a common name."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(3, 16)])
        self.top = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            h = pyro.sample("h", dist.Bernoulli(logits=self.top).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.layers[0](h)).to_event(1), obs=x)


class ModuleListGuide(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(16, 3)])

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("h", dist.Bernoulli(logits=self.layers[0](x)).to_event(1))


def test_a_layers_attribute_of_ones_own_is_not_taken_for_layer_widths(tmp_path):
    x = simulated_images(40, seed=5)
    engine = WakeSleep(ModuleListNet(), ModuleListGuide(), algorithm="nrws")
    engine.fit(x, epochs=1, batch_size=20, progress=False,
               checkpoint=str(tmp_path / "run.pt"))
    assert engine.config()["layers"] is None
    assert WakeSleep(*helmholtz_machine((16, 4))).config()["layers"] == [16, 4]


@pytest.mark.parametrize("algorithm", ["rws", "bihm"])
def test_log_likelihood_checks_its_input_after_training_too(algorithm):
    data = simulated_images(60, seed=6, dtype=torch.float64)
    engine = WakeSleep(CauseFeatureImage().double(), ImageFeatureCause().double(),
                       algorithm=algorithm)
    engine.fit(data, epochs=1, batch_size=30, progress=False)
    with pytest.raises(ValueError, match=r"convert the data \(x.to\(torch.float64\)\)"):
        engine.log_likelihood(data[:3].float(), num_samples=10, log_partition=0.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        engine.log_likelihood(data[:3].numpy(), num_samples=10, log_partition=0.0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        engine.log_likelihood(data[:3], num_samples=0, log_partition=0.0)


def test_bihm_inference_data_of_an_untrained_engine():
    engine = WakeSleep(CauseFeatureImage(), ImageFeatureCause(), algorithm="bihm")
    idata = engine.to_inference_data(simulated_images(10, seed=9), num_samples=20,
                                     log_partition=-0.5)
    assert idata.amortization.attrs["log_partition"] == -0.5
    assert idata.amortization["log_likelihood_star"].shape == (10,)


def test_bihm_inference_data_reports_the_likelihood_of_its_own_model():
    """BiHM's model is ``p*``: ``amortization.log_likelihood_star`` is the engine's
    ``log_likelihood`` (2 log mean √w - log Ẑ) from the same kind of draws; the two
    estimates of 20 points with S = 400 agree within a few of their Monte Carlo
    errors (about 0.05 nats here), and ``log p`` of the top-down model stays beside it."""
    data = simulated_images(100, seed=7)
    pyro.set_rng_seed(8)
    engine = WakeSleep(CauseFeatureImage(), ImageFeatureCause(), algorithm="bihm")
    engine.fit(data, epochs=2, batch_size=50, progress=False)
    log_z, _ = engine.log_partition()
    idata = engine.to_inference_data(data[:20], num_samples=400)
    star = idata.amortization["log_likelihood_star"].values
    direct = engine.log_likelihood(data[:20], num_samples=400, log_partition=log_z).numpy()
    assert abs(star.mean() - direct.mean()) < 0.2
    assert idata.amortization.attrs["log_partition"] <= 0.05  # Z <= 1 (Cauchy-Schwarz)
    assert "log_likelihood" in idata.amortization
