"""The rate in closed form (``analytic_kl``): the same objective as the single-draw
estimate, with less gradient noise, for programs written as the docs say and for the
built-in modules; where it does not apply the draws are used, and ``True`` says why."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import TwoLayerGuide, TwoLayerModel
from pyro.nn import PyroModule, PyroParam
from torch import nn

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, rate_distortion
from posterity.infer.checkpoints import compare_settings
from posterity.infer.importance import NoAnalyticKLError, traced_particles, weighted_particles
from posterity.models import VAE, LinearGaussianVAE


class Conjugate(PyroModule):
    """z ~ N(0, 1), x | z ~ N(z, 1), one scalar per data point (x is [N, 1])."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


class LinearGuide(PyroModule):
    """q(z | x) = N(a x + b, s²)."""

    def __init__(self, a=0.3, b=0.2, s=0.8):
        super().__init__()
        self.a = PyroParam(torch.tensor(a, dtype=torch.float64))
        self.b = PyroParam(torch.tensor(b, dtype=torch.float64))
        self.log_s = PyroParam(torch.tensor(math.log(s), dtype=torch.float64))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.a * x + self.b, self.log_s.exp()).to_event(1))


class StudentPrior(PyroModule):
    """A prior without a closed-form KL from a Gaussian guide."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.StudentT(4.0, x.new_zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def normal_kl(loc, scale):
    """KL(N(loc, scale²) || N(0, 1))."""
    return 0.5 * (loc**2 + scale**2 - 1) - scale.log()


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()


def test_the_closed_form_is_the_expectation_of_the_single_draw_rate():
    x = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64)
    guide = LinearGuide()
    pyro.set_rng_seed(0)
    particles = weighted_particles(Conjugate(), guide, (x,), num_particles=20_000,
                                   plate_nesting=1, analytic_kl=True)
    with torch.no_grad():
        expected = normal_kl(guide.a * x + guide.b, guide.log_s.exp()).sum(-1)
        torch.testing.assert_close(particles.kl, expected.expand(20_000, 3))
        sampled = -particles.log_density_ratio
        stderr = sampled.std(0) / math.sqrt(20_000)
        assert ((sampled.mean(0) - expected).abs() < 4 * stderr).all()


def test_the_elbo_gradient_keeps_its_mean_and_loses_three_quarters_of_its_variance():
    """With q = N(a x + b, s²) the single-draw ELBO's gradient in b is x - 2z (variance
    4 s² per data point), the closed form's x - z - μ (variance s²): a ratio of 4. Over
    400 replicates the log of an estimated variance ratio has a standard error of about
    0.1, so 2.5 is over 4 standard errors below 4, and the means agree within 4
    standard errors."""
    x = torch.linspace(-2, 2, 8, dtype=torch.float64)[:, None]
    gradients = {}
    for analytic in (None, False):
        pyro.clear_param_store()
        guide = LinearGuide()
        vi = AmortizedVI(Conjugate(), guide, analytic_kl=analytic)
        pyro.set_rng_seed(1)
        draws = []
        for _ in range(400):
            (grad,) = torch.autograd.grad(vi.loss(x), [guide.b])
            draws.append(grad)
        gradients[analytic] = torch.stack(draws)
    closed, sampled = gradients[None], gradients[False]
    assert float(sampled.var() / closed.var()) > 2.5, (sampled.var(), closed.var())
    stderr = math.sqrt(float(sampled.var() + closed.var()) / 400)
    assert abs(float(sampled.mean() - closed.mean())) < 4 * stderr


@pytest.mark.parametrize("multi_rate", [False, True], ids=["vae", "multi-rate vae"])
def test_built_in_pairs_draw_what_the_traced_programs_draw_and_the_same_kl(multi_rate):
    kwargs = {"multi_rate": True} if multi_rate else {}
    model, guide = VAE(20, 4, (16,), **kwargs), GaussianEncoder(20, 4, (16,), **kwargs)
    x = torch.bernoulli(torch.full((7, 20), 0.4))
    beta = {"beta": torch.full((7,), 0.5)} if multi_rate else {}
    runs = {}
    for name, call in [
        ("fast", lambda: weighted_particles(model, guide, (x,), beta, num_particles=5,
                                            plate_nesting=1, analytic_kl=None)),
        ("traced", lambda: traced_particles(model, guide, (x,), beta, num_particles=5,
                                            plate_nesting=1, analytic_kl=True)),
        ("sampled", lambda: weighted_particles(model, guide, (x,), beta, num_particles=5,
                                               plate_nesting=1)),
    ]:
        pyro.set_rng_seed(3)
        runs[name] = call()
    assert runs["sampled"].kl is None
    for name in ("traced", "sampled"):
        assert torch.equal(runs["fast"].latents["z"], runs[name].latents["z"])
        torch.testing.assert_close(runs["fast"].log_guide, runs[name].log_guide)
        torch.testing.assert_close(runs["fast"].log_likelihood, runs[name].log_likelihood)
    torch.testing.assert_close(runs["fast"].kl, runs["traced"].kl)
    loc, scale = guide.posterior_params(x, beta.get("beta"))
    torch.testing.assert_close(runs["fast"].kl[0], normal_kl(loc, scale).sum(-1))


def test_a_guide_that_draws_in_another_order_uses_the_draws_and_true_says_why():
    """The bottom-up guide draws z1 then z2, the model z2 then z1: KL(q(z1|x) || p(z1|z2))
    at a z2 drawn after z1 is not the expectation of its term."""
    model, guide = TwoLayerModel(), TwoLayerGuide()
    x = torch.bernoulli(torch.full((6, 12), 0.5))
    assert weighted_particles(model, guide, (x,), num_particles=2, plate_nesting=1,
                              analytic_kl=None).kl is None
    with pytest.raises(NoAnalyticKLError, match=r"order \['z1', 'z2'\].*\['z2', 'z1'\]"):
        weighted_particles(model, guide, (x,), num_particles=2, plate_nesting=1,
                           analytic_kl=True)
    with pytest.raises(NoAnalyticKLError, match="order"):
        AmortizedVI(model, guide, analytic_kl=True).loss(x)
    assert torch.isfinite(AmortizedVI(model, guide).loss(x))  # the default falls back


def test_a_site_without_a_closed_form_uses_the_draws_and_true_names_it():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    particles = weighted_particles(StudentPrior(), LinearGuide(), (x,), num_particles=2,
                                   plate_nesting=1, analytic_kl=None)
    assert particles.kl is None
    with pytest.raises(NoAnalyticKLError, match="'z'.*Normal.*StudentT"):
        weighted_particles(StudentPrior(), LinearGuide(), (x,), num_particles=2,
                           plate_nesting=1, analytic_kl=True)


def test_the_engine_uses_the_closed_form_by_default_for_every_rate_objective():
    x = torch.bernoulli(torch.full((5, 10), 0.5))
    for objective, extra in [("elbo", {}), ("beta", {"beta": 2.0})]:
        vi = AmortizedVI(VAE(10, 2, (8,)), GaussianEncoder(10, 2, (8,)), objective=objective,
                         **extra)
        particles = vi.particles(x)
        assert particles.kl is not None
        pyro.set_rng_seed(0)
        value = vi.objective_value(x)
        pyro.set_rng_seed(0)
        particles = vi.particles(x)
        weight = extra.get("beta", 1.0)
        torch.testing.assert_close(
            value, (particles.log_likelihood - weight * particles.kl).mean(0))
    vi = AmortizedVI(VAE(10, 2, (8,)), GaussianEncoder(10, 2, (8,)), analytic_kl=False)
    assert vi.particles(x).kl is None
    assert vi.config()["analytic_kl"] is False


def test_iwae_has_no_kl_term_and_refuses_true():
    pair = VAE(10, 2, (8,)), GaussianEncoder(10, 2, (8,))
    with pytest.raises(ValueError, match="iwae.*no KL term"):
        AmortizedVI(*pair, objective="iwae", analytic_kl=True)
    vi = AmortizedVI(*pair, objective="iwae")
    assert vi.particles(torch.bernoulli(torch.full((3, 10), 0.5))).kl is None
    with pytest.raises(TypeError, match="analytic_kl"):
        AmortizedVI(*pair, analytic_kl="yes")


def test_rate_distortion_reports_the_exact_rate_where_it_has_a_closed_form():
    model, guide = LinearGaussianVAE(6, 2), GaussianEncoder(6, 2, ())
    x = torch.randn(40, 6)
    curve = rate_distortion(model, guide, x, num_samples=3)
    with torch.no_grad():
        loc, scale = guide.posterior_params(x)
        exact = normal_kl(loc, scale).sum(-1).mean()
    torch.testing.assert_close(curve.rate, exact)


def test_a_checkpoint_from_before_analytic_kl_still_resumes():
    saved = {"engine.objective": "elbo", "engine.lr": 1e-3}
    assert compare_settings("run.pt", saved, {**saved, "engine.analytic_kl": None}) == []


def test_a_user_written_vae_in_float64_trains_with_the_closed_form():
    """A pair written from the docs, not the built-ins: the closed form is found
    through the traces and the ELBO rises."""

    class Decoder(PyroModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 12))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)

    class Encoder(PyroModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 4))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                loc, raw = self.net(x).chunk(2, -1)
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    torch.manual_seed(0)
    model, guide = Decoder().double(), Encoder().double()
    x = torch.bernoulli(torch.full((200, 12), 0.3, dtype=torch.float64))
    vi = AmortizedVI(model, guide, lr=1e-2, analytic_kl=True)
    assert vi.particles(x[:4]).kl.dtype == torch.float64
    history = vi.fit(x, epochs=15, batch_size=50, progress=False, seed=0)
    losses = history.epochs["train_loss"]
    # independent pixels: no model does much better than their empirical entropy
    p = x.mean(0)
    entropy = float(-(p * p.log() + (1 - p) * (1 - p).log()).sum())
    assert losses[-1] < losses[0] and abs(losses[-1] - entropy) < 0.2, (losses, entropy)
