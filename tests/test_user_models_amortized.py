"""A user-written convolutional VAE (its own site names, image-shaped data, no density
protocol) through amortized VI and its evaluation, and float64 runs of the built-in and
the user programs."""

import math

import numpy as np
import pyro
import pytest
import torch
from user_models.amortized_models import ConvDecoderModel, ConvEncoderGuide, digit_images

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, log_likelihood, rate_distortion, to_inference_data
from posterity.models import VAE


@pytest.mark.parametrize("objective, kwargs", [
    ("elbo", {}), ("iwae", {"num_particles": 4}), ("beta", {"beta": 0.5}),
])
def test_a_user_conv_vae_learns_with_every_objective(objective, kwargs):
    """Two epochs on 600 digits raise the held-out log-likelihood of images [N, 1, 8, 8] far beyond
    the Monte Carlo error of the two estimates."""
    train, test = digit_images()
    test = test[:100]
    pyro.set_rng_seed(0)
    model, guide = ConvDecoderModel(), ConvEncoderGuide()
    before = log_likelihood(model, guide, test, 100, return_stderr=True, progress=False)
    vi = AmortizedVI(model, guide, objective=objective, lr=3e-3, **kwargs)
    vi.fit(train[:600], epochs=2, batch_size=50, progress=False, seed=0)
    after = log_likelihood(model, guide, test, 100, return_stderr=True, progress=False)
    gain = after[0].mean() - before[0].mean()
    stderr = math.sqrt((before[1].pow(2).sum() + after[1].pow(2).sum()) / len(test) ** 2)
    assert gain > 1.0 and gain > 10 * stderr, (gain, stderr)
    assert vi.history.epochs["train_loss"][-1] < vi.history.epochs["train_loss"][0]


def test_a_user_conv_vae_is_evaluated_and_converted_to_arviz():
    train, test = digit_images()
    pyro.set_rng_seed(0)
    model, guide = ConvDecoderModel(), ConvEncoderGuide()
    vi = AmortizedVI(model, guide, objective="elbo", lr=3e-3)
    vi.fit(train[:300], epochs=1, batch_size=50, progress=False, seed=0)
    curve = rate_distortion(model, guide, test[:50], num_samples=8)
    assert curve.rate.shape == () and float(curve.rate) > 0
    torch.testing.assert_close(curve.objective, curve.rate + curve.distortion)
    idata = to_inference_data(vi, test[:20], num_samples=40)
    assert idata.posterior["code"].shape == (1, 40, 20, 4)
    assert idata.observed_data["x"].shape == (20, 64)
    assert idata.amortization["pareto_k"].shape == (20,)
    assert np.isfinite(idata.sample_stats["log_importance_weight"]).all()
    assert idata.posterior.attrs["objective"] == "elbo"


def test_a_user_model_cannot_run_multi_rate():
    with pytest.raises(ValueError, match="objective='multi_rate' needs a multi-rate model"):
        AmortizedVI(ConvDecoderModel(), ConvEncoderGuide(), objective="multi_rate")


def test_images_of_the_wrong_shape_are_named():
    vi = AmortizedVI(ConvDecoderModel(), ConvEncoderGuide())
    with pytest.raises(ValueError, match="data must have shape \\[N, D\\] \\(or \\[N, ...\\]"):
        vi.fit(torch.zeros(5), epochs=1, progress=False)


# --- float64 --------------------------------------------------------------------------
def _float64_arrays(idata, groups):
    for group in groups:
        for name, array in idata[group].data_vars.items():
            if array.dtype.kind == "f":
                assert array.dtype == np.float64, (group, name, array.dtype)


def test_a_float64_multi_rate_vae_gives_float64_results():
    train, test = digit_images(torch.float64)
    train, test = train.flatten(1), test[:30].flatten(1)
    pyro.set_rng_seed(0)
    model = VAE(64, 3, (16,), multi_rate=True).double()
    guide = GaussianEncoder(64, 3, (16,), multi_rate=True).double()
    vi = AmortizedVI(model, guide, objective="multi_rate", scheduler="cosine")
    vi.fit(train[:200], epochs=1, batch_size=50, valid=test, progress=False, seed=0)
    assert all(p.dtype == torch.float64 for p in vi.parameters())
    ll = log_likelihood(model, guide, test, 20, progress=False)
    curve = rate_distortion(model, guide, test, [0.1, 1.0], num_samples=4)
    assert ll.dtype == curve.rate.dtype == curve.objective.dtype == torch.float64
    idata = vi.to_inference_data(test, num_samples=20, num_betas=3)
    _float64_arrays(idata, ("posterior", "sample_stats", "amortization", "rate_distortion"))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_a_float64_user_conv_vae_gives_float64_results(objective):
    train, test = digit_images(torch.float64)
    pyro.set_rng_seed(0)
    model, guide = ConvDecoderModel().double(), ConvEncoderGuide().double()
    vi = AmortizedVI(model, guide, objective=objective, num_particles=2)
    vi.fit(train[:100], epochs=1, batch_size=50, valid=test[:20], progress=False, seed=0)
    ll, stderr = log_likelihood(model, guide, test[:10], 20, return_stderr=True,
                                progress=False)
    curve = rate_distortion(model, guide, test[:10], num_samples=4)
    assert ll.dtype == stderr.dtype == curve.distortion.dtype == torch.float64
    _float64_arrays(to_inference_data(vi, test[:10], num_samples=20),
                    ("posterior", "sample_stats", "amortization"))


class LinearDecoder(pyro.nn.PyroModule):
    """``z ~ N(0, I)``, ``x | z ~ N(W z, I)``."""

    def __init__(self) -> None:
        super().__init__()
        self.decode = torch.nn.Linear(2, 5)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(self.decode(z), 1.0).to_event(1),
                        obs=x)


class ScaledEncoder(pyro.nn.PyroModule):
    """A guide with a constrained ``PyroParam`` scale, as Pyro's docs write one."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = torch.nn.Linear(5, 2)
        self.scale = pyro.nn.PyroParam(torch.ones(2),
                                       constraint=torch.distributions.constraints.positive)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(self.encode(x), self.scale).to_event(1))


class GlobalScaleEncoder(ScaledEncoder):
    """The same guide with its scale from ``pyro.param``, outside the module."""

    def forward(self, x):
        scale = pyro.param("q_scale", torch.ones(2),
                           constraint=torch.distributions.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(self.encode(x), scale).to_event(1))


def test_a_second_instance_of_a_class_is_not_given_the_first_ones_parameters():
    """Pyro's global parameter store names a ``PyroParam`` by its attribute path, so
    tracing a second instance would swap in the first one's tensor, which the second
    engine does not train: refused with the fix, the module's own parameter restored."""
    x = torch.randn(50, 5)
    AmortizedVI(LinearDecoder(), ScaledEncoder()).fit(x, epochs=1, progress=False)
    guide = ScaledEncoder()
    own = guide.scale_unconstrained
    engine = AmortizedVI(LinearDecoder(), guide)
    with pytest.raises(ValueError, match=r"\['ScaledEncoder.scale_unconstrained'\].*call "
                                         r"pyro.clear_param_store\(\)"):
        engine.fit(x, epochs=1, progress=False)
    assert guide.scale_unconstrained is own
    pyro.clear_param_store()
    before = guide.scale.detach().clone()
    engine.fit(x, epochs=5, batch_size=10, progress=False)
    assert guide.scale_unconstrained is own and not torch.equal(guide.scale, before)


def test_a_pyro_param_outside_the_modules_is_named_as_untrained():
    x = torch.randn(50, 5)
    with pytest.warns(UserWarning, match=r"pyro.param sites \['q_scale'\] are not parameters"):
        AmortizedVI(LinearDecoder(), GlobalScaleEncoder()).fit(x, epochs=1, progress=False)


class ScaledDecoder(LinearDecoder):
    """A model with a ``PyroParam`` at the same attribute path as the guide's."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = pyro.nn.PyroParam(torch.ones(5),
                                       constraint=torch.distributions.constraints.positive)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(self.decode(z), self.scale)
                        .to_event(1), obs=x)


def test_model_and_guide_parameters_with_one_name_are_refused_with_a_rename():
    with pytest.raises(ValueError, match="share their names .* rename one of them"):
        AmortizedVI(ScaledDecoder(), ScaledEncoder()).fit(torch.randn(20, 5), epochs=1,
                                                           progress=False)


class StoredScaleEncoder(ScaledEncoder):
    """Reads a ``pyro.param`` that is already in the store (no initial value)."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(self.encode(x), pyro.param("q_scale"))
                        .to_event(1))


def test_a_program_reading_a_stored_pyro_param_still_runs():
    """The untrained-parameter probe runs in a scratch store, where such a program
    fails: the probe gives up silently and training goes on."""
    pyro.param("q_scale", torch.ones(2), constraint=torch.distributions.constraints.positive)
    engine = AmortizedVI(LinearDecoder(), StoredScaleEncoder())
    engine.fit(torch.randn(20, 5), epochs=1, progress=False)
    assert engine.num_steps == 1
