"""Amortized VI: gradients agree with Pyro, objectives relate as they should, bad input
fails early with a message naming the argument."""

import pyro
import pytest
import torch
from programs import TwoLayerGuide, TwoLayerModel
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI
from posterity.models import VAE


def binary(rows: int, cols: int) -> torch.Tensor:
    return torch.bernoulli(torch.full((rows, cols), 0.3))


def gradients(params):
    return [p.grad.clone() for p in params]


BUILT_IN = lambda: (VAE(12, 3, (8,)), GaussianEncoder(12, 3, (8,)))  # noqa: E731
USER_WRITTEN = lambda: (TwoLayerModel(12), TwoLayerGuide(12))  # noqa: E731


@pytest.mark.parametrize(
    "make, analytic_kl, pyro_elbo",
    [
        (BUILT_IN, False, Trace_ELBO),  # the density protocol, the rate from the draws
        (BUILT_IN, None, TraceMeanField_ELBO),  # the default: the KL in closed form
        # Pyro traces; the bottom-up guide draws in another order than the model, so the
        # default uses the draws (TraceMeanField_ELBO would take the KL, and be biased)
        (USER_WRITTEN, None, Trace_ELBO),
    ],
    ids=["built-in-draws", "built-in-closed-form", "user-written"],
)
def test_elbo_gradient_equals_pyros(make, analytic_kl, pyro_elbo):
    model, guide = make()
    x = binary(9, 12)
    vi = AmortizedVI(model, guide, objective="elbo", num_particles=1, analytic_kl=analytic_kl)
    vi.prepare(x)
    params = vi.parameters()

    pyro.set_rng_seed(7)
    vi.loss(x).backward()
    ours = gradients(params)
    for p in params:
        p.grad = None

    pyro.set_rng_seed(7)
    (pyro_elbo().differentiable_loss(model, guide, x) / x.shape[0]).backward()
    for mine, pyros in zip(ours, gradients(params)):
        torch.testing.assert_close(mine, pyros, rtol=1e-4, atol=1e-6)


def test_beta_one_is_the_elbo_and_iwae_with_one_particle_is_the_elbo():
    model, guide = VAE(12, 3, (8,)), GaussianEncoder(12, 3, (8,))
    x = binary(9, 12)
    values = {}
    for objective, kwargs in [("elbo", {}), ("beta", {"beta": 1.0}), ("iwae", {}),
                              ("elbo-draws", {"analytic_kl": False})]:
        vi = AmortizedVI(model, guide, objective=objective.split("-")[0], num_particles=1,
                         **kwargs)
        pyro.set_rng_seed(4)
        values[objective] = vi.objective_value(x)
    torch.testing.assert_close(values["beta"], values["elbo"])
    torch.testing.assert_close(values["iwae"], values["elbo-draws"])


def test_beta_scales_the_latent_term():
    model, guide = VAE(12, 3, (8,)), GaussianEncoder(12, 3, (8,))
    x = binary(9, 12)
    vi = AmortizedVI(model, guide, objective="beta", beta=4.0, num_particles=3)
    pyro.set_rng_seed(4)
    value = vi.objective_value(x)
    pyro.set_rng_seed(4)
    particles = vi.particles(x)
    expected = (particles.log_likelihood - 4.0 * particles.kl).mean(0)
    torch.testing.assert_close(value, expected)
    vi = AmortizedVI(model, guide, objective="beta", beta=4.0, num_particles=3,
                     analytic_kl=False)
    pyro.set_rng_seed(4)
    value = vi.objective_value(x)
    pyro.set_rng_seed(4)
    particles = vi.particles(x)
    expected = (particles.log_likelihood + 4.0 * particles.log_density_ratio).mean(0)
    torch.testing.assert_close(value, expected)


def test_training_raises_the_objective_on_user_programs():
    torch.manual_seed(0)
    x = binary(400, 12)
    x[:200, :6] = 1.0  # structure worth learning
    vi = AmortizedVI(TwoLayerModel(12), TwoLayerGuide(12), objective="iwae", num_particles=4,
                     lr=1e-2)
    before = vi.validate(x)["valid_iwae"]
    history = vi.fit(x, epochs=15, batch_size=50, progress=False, seed=0)
    after = vi.validate(x)["valid_iwae"]
    assert after > before + 1.0
    assert len(history.steps["loss"]) == 15 * 8


# --- bad input -----------------------------------------------------------------------
@pytest.fixture
def vae_vi():
    return AmortizedVI(VAE(20, 3, (8,)), GaussianEncoder(20, 3, (8,)))


def test_data_of_the_wrong_width(vae_vi):
    with pytest.raises(ValueError, match="20 features.*got shape \\(5, 21\\)"):
        vae_vi.fit(binary(5, 21), epochs=1, progress=False)


def test_data_of_the_wrong_rank(vae_vi):
    with pytest.raises(ValueError, match="data must have shape \\[N, D\\]"):
        vae_vi.fit(binary(5, 20)[None], epochs=1, progress=False)


def test_nan_in_the_data(vae_vi):
    x = binary(5, 20)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="data contains NaN.*first rows \\[3\\]"):
        vae_vi.fit(x, epochs=1, progress=False)


def test_non_binary_data_with_a_bernoulli_likelihood(vae_vi):
    with pytest.raises(ValueError, match="must be binary.*likelihood='gaussian'"):
        vae_vi.fit(torch.rand(5, 20), epochs=1, progress=False)


def test_non_binary_validation_data_is_named(vae_vi):
    with pytest.raises(ValueError, match="valid must be binary"):
        vae_vi.fit(binary(5, 20), epochs=1, valid=torch.rand(5, 20), progress=False)


@pytest.mark.parametrize("num_particles", [0, -3])
def test_num_particles_below_one(num_particles):
    with pytest.raises(ValueError, match="num_particles must be >= 1"):
        AmortizedVI(VAE(20, 3), GaussianEncoder(20, 3), num_particles=num_particles)


def test_unknown_objective():
    with pytest.raises(ValueError, match="objective must be one of"):
        AmortizedVI(VAE(20, 3), GaussianEncoder(20, 3), objective="elbow")


def test_guide_latent_names_that_do_not_match_the_model():
    vi = AmortizedVI(VAE(20, 3), GaussianEncoder(20, 3, latent_name="h"))
    expected = "missing in guide: \\['z'\\].*unknown to model: \\['h'\\]"
    with pytest.raises(ValueError, match=expected):
        vi.fit(binary(5, 20), epochs=1, progress=False)


def test_integer_data_is_a_type_error(vae_vi):
    with pytest.raises(TypeError, match="floating-point"):
        vae_vi.fit(binary(5, 20).long(), epochs=1, progress=False)


def test_beta_goes_with_the_beta_objective_only():
    model, guide = VAE(20, 3, (8,)), GaussianEncoder(20, 3, (8,))
    with pytest.raises(ValueError, match="objective='beta' needs beta="):
        AmortizedVI(model, guide, objective="beta")
    for objective in ("elbo", "iwae"):
        with pytest.raises(ValueError, match="beta= applies to objective='beta' only"):
            AmortizedVI(model, guide, objective=objective, beta=4.0)


def test_data_of_another_dtype_than_the_parameters_is_refused_with_the_fix():
    from posterity.infer import log_likelihood

    model, guide = VAE(20, 3, (8,)), GaussianEncoder(20, 3, (8,))
    x = binary(16, 20).double()
    message = (r"data has dtype torch.float64 but the modules' parameters have torch.float32; "
               r"convert the data \(data.to\(torch.float32\)\) or, before building the "
               r"engine, the modules")
    with pytest.raises(ValueError, match=message):
        AmortizedVI(model, guide).fit(x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        log_likelihood(model, guide, x, 4, progress=False)
    model, guide = model.double(), guide.double()
    AmortizedVI(model, guide).fit(x, epochs=1, progress=False)  # converted: it trains
    with pytest.raises(ValueError, match="valid has dtype torch.float32"):
        AmortizedVI(model, guide).fit(x, epochs=1, valid=x.float(), progress=False)


def test_cuda_training_and_evaluation(cuda):
    from posterity.infer import log_likelihood

    model, guide = VAE(20, 3, (8,)).to(cuda), GaussianEncoder(20, 3, (8,)).to(cuda)
    x = binary(64, 20).to(cuda)
    vi = AmortizedVI(model, guide, objective="iwae", num_particles=4)
    vi.fit(x, epochs=2, batch_size=16, progress=False, seed=0)
    ll = log_likelihood(model, guide, x, 100, progress=False)
    assert ll.device.type == "cuda" and torch.isfinite(ll).all()
    with pytest.raises(ValueError, match="on cpu but the model's parameters are on cuda"):
        vi.fit(x.cpu(), epochs=1, progress=False)


def test_an_update_flushes_subnormals_inside_and_restores_the_callers_mode():
    """Subnormal floats (gradients and Adam moments decaying to zero) slow CPU arithmetic
    many times: inside an update they are flushed; after it the caller's mode is back."""
    if not torch.set_flush_denormal(False):  # returns whether the CPU has the mode
        pytest.skip("this CPU cannot flush subnormal floats")
    tiny = torch.tensor([1e-39])
    vi = AmortizedVI(VAE(6, 2, (4,)), GaussianEncoder(6, 2, (4,)))
    seen = []
    loss = vi.loss
    vi.loss = lambda x: (seen.append((tiny * 1.0).item()), loss(x))[1]
    vi.step(binary(8, 6))
    assert seen == [0.0]
    assert (tiny * 1.0).item() > 0.0
