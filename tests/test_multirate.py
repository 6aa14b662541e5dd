"""Multi-Rate VAE (Bae et al. 2023): β-gated layers, per-example β, the curve."""

import math
from pathlib import Path

import pyro
import pytest
import torch
from programs import UserGuide, UserModel, two_direction_data
from torch import nn

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, rate_distortion
from posterity.infer.amortized.betas import beta_at, sample_betas
from posterity.layers.gated import (
    DEFAULT_BETA_EXTENSION,
    BetaStandardizer,
    GatedLinear,
    GatedMLP,
    GatedScale,
    gate_parameters,
    softplus_gate,
    sqrt_relu_gate,
    stagger_gates,
    two_sigmoid_gate,
)
from posterity.layers.networks import mlp
from posterity.models import VAE


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_gates_add_two_parameters_per_unit_and_a_low_rank_response_per_layer():
    plain, gated = mlp(784, (200, 200), 100), GatedMLP(784, (200, 200), 100, "two_sigmoid")
    assert count(gated) - count(plain) == 2 * (200 + 200 + 100)
    ranked = GatedMLP(784, (200, 200), 100, "two_sigmoid", rank=3)
    assert count(ranked) - count(gated) == 3 * ((784 + 200) + (200 + 200) + (200 + 100))
    # the decoder gates its 50 latent inputs, hidden units and 784 outputs (softplus
    # gates on the hidden units and outputs, see posterity.layers.gated); each of its
    # three layers has rank-16 β-dependent weights
    model = VAE(784, 50, (200, 200), multi_rate=True)
    responses = 16 * ((50 + 200) + (200 + 200) + (200 + 784))
    assert count(model) - count(VAE(784, 50, (200, 200))) == (
        2 * (50 + 200 + 200 + 784) + responses)
    assert all(layer.gate is softplus_gate and (layer.rank, layer.degree) == (16, 1)
               for layer in model.decoder.layers)
    assert model.decoder.input_gate.gate is two_sigmoid_gate
    guide = GaussianEncoder(784, 50, (200, 200), multi_rate=True)
    assert all(layer.gate is two_sigmoid_gate and (layer.rank, layer.degree) == (16, 1)
               for layer in guide.net.layers)
    bare = VAE(784, 50, (200, 200), multi_rate=True, response_rank=0)
    assert count(model) - count(bare) == responses
    with pytest.raises(ValueError, match="gates its hidden layers"):
        GatedMLP(50, (), 784, "sqrt_relu", gate_output=False)
    with pytest.raises(ValueError, match="rank must be an integer >= 0, got -1"):
        GaussianEncoder(784, 50, (200,), multi_rate=True, response_rank=-1)


def test_a_second_degree_response_adds_a_block_weighted_by_u_squared_minus_one():
    """With degree 2 the β-dependent weights are u A + (u**2 - 1) C, two rank-r blocks:
    at u = +-1 the second block vanishes, at u = 0 it enters with weight -1."""
    torch.manual_seed(0)
    layer = GatedLinear(5, 3, "two_sigmoid", rank=2, degree=2).double()
    assert count(layer) - count(GatedLinear(5, 3, "two_sigmoid", rank=2)) == 2 * (5 + 3)
    with torch.no_grad():
        layer.modulation_out.normal_()
        layer.gate_weight.normal_()
    h = torch.randn(4, 5, dtype=torch.float64)
    first, second = layer.modulation_in.split(2), layer.modulation_out.split(2, dim=1)

    def expected(u: float) -> torch.Tensor:
        response = u * (h @ first[0].T) @ second[0].T + (u * u - 1) * (h @ first[1].T) @ second[1].T
        gate = two_sigmoid_gate(u * layer.gate_weight + layer.gate_bias)
        return (layer.linear(h) + response) * gate

    for u in (-1.0, 0.0, 1.0, 1.7):
        torch.testing.assert_close(layer(h, torch.full((4,), u, dtype=torch.float64)),
                                   expected(u))
    with pytest.raises(ValueError, match=r"degree must be one of \(1, 2\), got 3"):
        VAE(784, 50, (200,), multi_rate=True, response_degree=3)


def test_encoder_outputs_and_decoder_inputs_start_with_staggered_gates():
    """Unit j's gate starts as 2 sigmoid(-3 (u - t_j)): 1 at its threshold t_j, with the
    thresholds evenly spaced from u = -0.5 (a third of the way up the range, which runs
    from -sqrt(3) to sqrt(3)) to u = 2.5; the encoder's mean and log-scale halves share
    them. So fewer latent units are open as β grows, and all are open at the smallest β."""
    model, guide = VAE(10, 4, (8,), multi_rate=True), GaussianEncoder(10, 4, (8,), multi_rate=True)
    expected = torch.linspace(-0.5, 2.5, 4)
    u = torch.linspace(-math.sqrt(3), math.sqrt(3), 9)
    for layer, repeats in ((guide.net.layers[-1], 2), (model.decoder.input_gate, 1)):
        with torch.no_grad():
            thresholds = -layer.gate_bias / layer.gate_weight
            torch.testing.assert_close(thresholds, expected.repeat(repeats))
            gates = two_sigmoid_gate(u[:, None] * layer.gate_weight + layer.gate_bias)
        assert (layer.gate_weight < 0).all()
        opened = (gates > 1 - 1e-6).sum(-1)
        assert opened[0] == 4 * repeats and (opened[1:] <= opened[:-1]).all()
    # the other gates start flat, at 1 for every β (2 sigmoid and softplus gates), and
    # the β-dependent low-rank weights at 0
    for layer in (*guide.net.layers[:-1], *model.decoder.layers):
        assert (layer.gate_weight == 0).all() and (layer.gate_bias == 0).all()
    for layer in (*guide.net.layers, *model.decoder.layers):
        assert (layer.modulation_out == 0).all()
    with pytest.raises(ValueError, match="needs 2 sigmoid gates"):
        stagger_gates(GatedLinear(3, 4, "sqrt_relu"))
    with pytest.raises(ValueError, match="repeats must divide the 4 gated units, got 3"):
        stagger_gates(GatedLinear(3, 4, "two_sigmoid"), repeats=3)


def test_gate_functions():
    layer = GatedLinear(3, 2, "two_sigmoid")
    h, u = torch.randn(5, 3), torch.randn(5)
    with torch.no_grad():
        layer.gate_weight.copy_(torch.tensor([0.5, -1.0]))
        layer.gate_bias.copy_(torch.tensor([0.1, 0.2]))
    expected = layer.linear(h) * 2 * torch.sigmoid(u[:, None] * layer.gate_weight + layer.gate_bias)
    torch.testing.assert_close(layer(h, u), expected)
    scale = GatedScale(2, "sqrt_relu")
    with torch.no_grad():
        scale.gate_weight.copy_(torch.tensor([1.0, -0.5]))
    h2 = torch.randn(5, 2)
    torch.testing.assert_close(
        scale(h2, u), h2 * sqrt_relu_gate(u[:, None] * scale.gate_weight + scale.gate_bias))
    x = torch.tensor([-3.0, -0.5, 0.0, 2.0])
    torch.testing.assert_close(
        sqrt_relu_gate(x), torch.sqrt(torch.relu(1 - torch.exp(x))), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(softplus_gate(x), torch.log1p(torch.exp(x)) / math.log(2))
    assert softplus_gate(torch.tensor(0.0)) == 1


def test_low_rank_weights_move_with_beta():
    """``((W + u M_out M_in) h + c) * gate``, batched over particles ``[K, B, in]``."""
    layer = GatedLinear(3, 2, "softplus", rank=2).double()
    with torch.no_grad():
        layer.modulation_out.normal_()
    h, u = torch.randn(4, 5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    weights = layer.linear.weight + u[:, None, None] * (layer.modulation_out @ layer.modulation_in)
    pre = torch.einsum("boi,kbi->kbo", weights, h) + layer.linear.bias
    torch.testing.assert_close(layer(h, u), pre * softplus_gate(layer.gate_bias))
    # at u = 0 (the geometric middle of the range) the layer is the plain gated one
    torch.testing.assert_close(layer(h, torch.zeros(5, dtype=torch.float64)),
                               layer.linear(h) * softplus_gate(layer.gate_bias))


def test_log_beta_is_standardized_over_the_training_range():
    standardize = BetaStandardizer((0.01, 10.0), extension=1.0)
    assert standardize.beta_range == (0.01, 10.0)
    assert standardize.training_range == pytest.approx((0.001, 10.0))
    # log β uniform on [log a, log b]: the endpoints sit at ±sqrt(3) standard deviations
    torch.testing.assert_close(standardize(torch.tensor([0.001, 10.0])),
                               torch.tensor([-math.sqrt(3), math.sqrt(3)]))
    assert BetaStandardizer((0.01, 10.0)).training_range == pytest.approx(
        (0.01 / 10**DEFAULT_BETA_EXTENSION, 10.0))
    beta = sample_betas(0.001, 10.0, (200_000,), torch.zeros(()))
    u = standardize(beta)
    assert beta.min() >= 0.001 and beta.max() <= 10.0
    assert abs(u.mean()) < 4 / math.sqrt(len(u))  # sd of u is 1
    assert abs(u.var() - 1) < 4 * math.sqrt(0.8 / len(u))  # var of the sample variance


def test_beta_none_is_the_plain_vae_at_beta_one():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    z, x = torch.randn(4, 3), torch.randn(4, 10)
    torch.testing.assert_close(model.decoder_output(z), model.decoder_output(z, beta=1.0))
    torch.testing.assert_close(guide.posterior_params(x)[0], guide.posterior_params(x, 1.0)[0])
    with pytest.raises(ValueError, match="beta= needs a multi-rate VAE"):
        VAE(10, 3, (8,)).decoder_output(z, beta=2.0)


def test_objective_is_distortion_plus_beta_rate_per_example():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    vi = AmortizedVI(model, guide, objective="multi_rate", num_particles=2)
    x = torch.bernoulli(torch.full((6, 10), 0.4))
    beta = torch.tensor([0.01, 0.1, 1.0, 2.0, 5.0, 10.0])
    pyro.set_rng_seed(1)
    value = vi.objective_value(x, beta=beta)
    from posterity.infer.importance import weighted_particles

    pyro.set_rng_seed(1)  # the same draws, scored by hand; the rate in closed form
    particles = weighted_particles(model, guide, (x,), {"beta": beta}, num_particles=2,
                                   plate_nesting=1)
    loc, scale = guide.posterior_params(x, beta)
    rate = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
    torch.testing.assert_close(value, particles.log_likelihood.mean(0) - beta * rate)


def check_curve_of_one_run(device: torch.device) -> None:
    from posterity.datasets import binarized_digits

    train, _, test = binarized_digits()
    pyro.set_rng_seed(0)
    model = VAE(64, 8, (64,), multi_rate=True).to(device)
    guide = GaussianEncoder(64, 8, (64,), multi_rate=True).to(device)
    AmortizedVI(model, guide, objective="multi_rate", lr=3e-3).fit(
        train.to(device), epochs=15, batch_size=50, progress=False, seed=0
    )
    betas = torch.tensor([0.01, 0.1, 1.0, 10.0], device=device)
    curve = rate_distortion(model, guide, test.to(device), betas, num_samples=32)
    assert curve.rate.shape == (4,) and curve.beta is not None
    # Each step is worth nats, far above the Monte Carlo error of 250 points x 32 draws.
    assert (curve.rate[:-1] > curve.rate[1:] + 0.5).all(), curve
    assert (curve.distortion[:-1] < curve.distortion[1:]).all(), curve


def test_one_run_gives_a_curve_whose_rate_falls_as_beta_grows():
    check_curve_of_one_run(torch.device("cpu"))


def test_one_run_gives_the_same_kind_of_curve_on_cuda(cuda):
    check_curve_of_one_run(cuda)


def test_beta_warmup_grows_the_range_from_its_low_end():
    kwargs = {"multi_rate": True, "beta_range": (0.1, 10.0), "beta_extension": 1.0}
    model, guide = VAE(10, 3, (8,), **kwargs), GaussianEncoder(10, 3, (8,), **kwargs)
    vi = AmortizedVI(model, guide, objective="multi_rate", beta_warmup=4)
    x = torch.bernoulli(torch.full((8, 10), 0.4))
    ranges = []
    for _ in range(6):
        ranges.append(vi.current_beta_range())
        vi.step(x)
    # from the low end of the training range, a decade below beta_range
    torch.testing.assert_close(torch.tensor(ranges),
                               torch.tensor([[0.01, 0.01 * 1000 ** (k / 4)] for k in (1, 2, 3)]
                                            + [[0.01, 10.0]] * 3))


# --- the linear check -----------------------------------------------------------------
EIGENVALUES = torch.tensor([4.0, 2.0, 1.0, 0.5])  # data covariance, in its eigenbasis
NOISE_VARIANCE = 1.0  # the decoder's fixed σ²


def whitened_data(n: int) -> torch.Tensor:
    """Rows whose empirical mean is 0 and covariance exactly diag(EIGENVALUES)."""
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / n)).T
    return x * EIGENVALUES.sqrt()


def optimal_beta_objective(beta: float) -> float:
    """min over linear VAEs of distortion + β rate, in nats per data point.

    With decoder W, encoder mean V x and diagonal variance D (Lucas et al. 2019, with a
    β on the KL), the optimum keeps direction i active iff λ_i > β σ², with
    w_i² = λ_i - β σ², v_i = w_i / λ_i, d_i = β σ² / λ_i: it costs β/2 of distortion and
    ½ log(λ_i / (β σ²)) of rate. A collapsed direction costs λ_i / (2 σ²) of distortion.
    """
    lam, s2 = EIGENVALUES, NOISE_VARIANCE
    active = lam > beta * s2
    distortion = torch.where(active, torch.full_like(lam, beta / 2), lam / (2 * s2)).sum()
    rate = torch.where(active, 0.5 * torch.log(lam / (beta * s2)), torch.zeros_like(lam)).sum()
    return float(distortion + 0.5 * len(lam) * math.log(2 * math.pi * s2) + beta * rate)


def test_linear_mr_vae_reaches_the_beta_vae_optimum_at_every_beta():
    """Bae et al. (2023, section 4): for a linear VAE the gated network can represent
    the whole response β ↦ optimal parameters; one run must then reach the analytic
    optimum of the β objective at every β. Missing any one direction costs at least
    0.058 nats at β ≤ 0.2 and 0.025 nats at β = 0.7; the tolerance of 0.02 nats tells
    those apart while allowing the residual of a 3000-update fit. The Monte Carlo error
    of each evaluation (64 draws x 2000 points) is below 0.002 nats."""
    from posterity.infer.importance import weighted_particles

    x = whitened_data(2000)
    beta_range, steps = (0.1, 10.0), 3000
    pyro.set_rng_seed(0)
    kwargs = dict(activation="identity", multi_rate=True, beta_range=beta_range)
    model = VAE(4, 8, (8,), likelihood="gaussian", scale=NOISE_VARIANCE**0.5, **kwargs)
    guide = GaussianEncoder(4, 8, (8,), **kwargs)
    # lr is 30 times the default here, so the gate slopes get a smaller multiplier than
    # the default 10, which moves them by up to 0.3 per update: with 10 the fit is
    # within 0.028 nats of the optimum at every β, with 3 within 0.018; without the
    # warm-up it misses by 1.2 nats at β = 0.1 and by 7.6-35 nats at β >= 1.4
    # (2026-12-07).
    vi = AmortizedVI(
        model, guide, objective="multi_rate", num_particles=8, lr=3e-2,
        gate_lr_multiplier=3.0, beta_warmup=steps // 3,
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, 1e-4),
    )
    vi.fit(x, epochs=steps, batch_size=len(x), progress=False, seed=0)
    with torch.no_grad():
        for beta in (0.1, 0.2, 0.35, 0.7, 1.4, 2.8, 5.0, 9.0):
            particles = weighted_particles(
                model, guide, (x,), {"beta": x.new_full((len(x),), beta)},
                num_particles=64, plate_nesting=1,
            )
            per_draw = -(particles.log_likelihood + beta * particles.log_density_ratio).mean(1)
            stderr = float(per_draw.std() / math.sqrt(len(per_draw)))
            gap = float(per_draw.mean()) - optimal_beta_objective(beta)
            assert stderr < 0.002
            assert abs(gap) < 0.02, f"β = {beta}: {gap:+.4f} nats from the optimum"


def check_rate_falls_after_training(model, guide, x) -> None:
    """Trained with the defaults (lr 1e-2), the rate at β = 0.1 must exceed the rate at
    β = 10 by more than 1 nat and by over 20 standard errors of the paired Monte Carlo
    differences (400 points x 16 draws)."""
    from posterity.infer.importance import weighted_particles

    pyro.set_rng_seed(0)
    vi = AmortizedVI(model, guide, objective="multi_rate", lr=1e-2)
    vi.fit(x, epochs=60, batch_size=100, progress=False, seed=0)
    with torch.no_grad():
        rates = [-weighted_particles(model, guide, (x,), {"beta": x.new_full((400,), b)},
                                     num_particles=16, plate_nesting=1).log_density_ratio.mean(0)
                 for b in (0.1, 10.0)]
    assert rates[0].dtype == x.dtype
    drop = rates[0] - rates[1]
    stderr = float(drop.std() / math.sqrt(len(drop)))
    assert float(drop.mean()) > max(1.0, 20 * stderr), (float(drop.mean()), stderr)


@pytest.mark.parametrize("degree", [1, 2])
def test_a_user_written_multi_rate_pair_trains_in_float64_with_the_defaults(degree):
    x = two_direction_data(torch.float64)
    pyro.set_rng_seed(0)
    check_rate_falls_after_training(UserModel(degree=degree).double(),
                                    UserGuide(degree=degree).double(), x)


def documented_pair() -> tuple[type, type]:
    """``MyModel`` and ``MyGuide`` as docs/families/amortized.md writes them."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "families" / "amortized.md")
    blocks = page.read_text().split("```python\n")[1:]
    (code,) = [b.split("```")[0] for b in blocks if "class MyGuide" in b]
    namespace: dict = {}  # the block imports what it uses, as a reader's script would
    exec(compile(code, str(page), "exec"), namespace)  # noqa: S102 (our own docs)
    return namespace["MyModel"], namespace["MyGuide"]


def test_the_documented_multi_rate_pair_learns_a_rate_that_falls_with_beta():
    my_model, my_guide = documented_pair()
    pyro.set_rng_seed(0)
    model, guide = my_model(), my_guide()
    assert not hasattr(model, "beta_range")  # the engine reads the standardizers
    check_rate_falls_after_training(model, guide, two_direction_data(torch.float32))


def test_multi_rate_needs_multi_rate_modules():
    with pytest.raises(ValueError, match="needs a multi-rate model and guide"):
        AmortizedVI(VAE(10, 3), GaussianEncoder(10, 3), objective="multi_rate")


def test_beta_range_must_agree_with_the_modules():
    model = VAE(10, 3, multi_rate=True, beta_range=(0.1, 1.0))
    guide = GaussianEncoder(10, 3, multi_rate=True, beta_range=(0.1, 1.0))
    with pytest.raises(ValueError, match="differs from the range"):
        AmortizedVI(model, guide, objective="multi_rate", beta_range=(0.01, 10.0))
    assert AmortizedVI(model, guide, objective="multi_rate").beta_range == (0.1, 1.0)


@pytest.mark.parametrize("beta_range", [(0.0, 1.0), (2.0, 1.0), (-1.0, 3.0)])
def test_bad_beta_range(beta_range):
    with pytest.raises(ValueError, match="beta_range must be"):
        VAE(10, 3, multi_rate=True, beta_range=beta_range)


def test_beta_range_is_for_multi_rate_only():
    with pytest.raises(ValueError, match="beta_range applies to objective='multi_rate'"):
        AmortizedVI(VAE(10, 3), GaussianEncoder(10, 3), beta_range=(0.1, 1.0))


# --- defaults that work (issue 12) -----------------------------------------------------
def test_gate_slopes_get_their_own_learning_rate_and_biases_the_base_rate():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    vi = AmortizedVI(model, guide, objective="multi_rate", lr=2e-3, gate_lr_multiplier=5.0)
    base, gates = vi.optimizer.param_groups
    assert base["lr"] == 2e-3 and gates["lr"] == pytest.approx(1e-2)
    slopes = {id(p) for p in gate_parameters(model, guide, slopes_only=True)}
    every = {id(p): p for p in gate_parameters(model, guide)}
    assert {id(p) for p in gates["params"]} == slopes
    # (w, b) per latent input, hidden and output unit of the decoder, per hidden and
    # output unit of the encoder; the slopes w are half of them
    assert sum(p.numel() for p in every.values()) == 2 * (3 + 8 + 10 + 8 + 6)
    assert sum(every[i].numel() for i in slopes) == 3 + 8 + 10 + 8 + 6
    assert set(every) - slopes <= {id(p) for p in base["params"]}
    # a plain pair has one group
    assert len(AmortizedVI(VAE(10, 3), GaussianEncoder(10, 3)).optimizer.param_groups) == 1


def test_cosine_schedule_takes_its_length_from_fit():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    vi = AmortizedVI(model, guide, objective="multi_rate", scheduler="cosine")
    x = torch.bernoulli(torch.full((40, 10), 0.4))
    with pytest.raises(ValueError, match="scheduler='cosine' needs its length"):
        vi.step(x)
    vi.fit(x, epochs=2, batch_size=10, progress=False, seed=0)
    # the length is the run's, not a setting: a resume with more epochs may extend it
    assert vi.scheduler.T_max == 8 and vi.config()["total_steps"] is None
    # both groups decayed to 0 together, keeping their ratio on the way
    assert [g["lr"] for g in vi.optimizer.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_config_is_plain_values():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    vi = AmortizedVI(model, guide, objective="multi_rate", num_particles=2, lr=3e-3,
                     gate_lr_multiplier=4.0, beta_sampling="batch", scheduler="cosine",
                     total_steps=100)
    config = vi.config()
    expected = {"objective": "multi_rate", "num_particles": 2, "lr": 3e-3,
                "beta_range": [0.01, 10.0], "gate_lr_multiplier": 4.0,
                "beta_sampling": "batch", "scheduler": "cosine", "total_steps": 100,
                "optimizer": "Adam"}
    assert {k: config[k] for k in expected} == expected
    for value in config.values():
        assert value is None or isinstance(value, (str, int, float, list))


def test_beta_sampling_per_minibatch_draws_one_beta():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    seen = []
    original = model.decoder_output

    def spy(z, beta=None):
        seen.append(beta)
        return original(z, beta)

    model.decoder_output = spy
    x = torch.bernoulli(torch.full((6, 10), 0.4))
    for sampling, distinct in (("batch", 1), ("example", 6), ("stratified", 6)):
        seen.clear()
        AmortizedVI(model, guide, objective="multi_rate", beta_sampling=sampling).step(x)
        assert seen[-1].shape == (6,) and len(set(seen[-1].tolist())) == distinct


def test_stratified_beta_puts_one_draw_in_each_slice_of_the_log_range():
    torch.manual_seed(0)
    beta = sample_betas(0.01, 10.0, (50,), torch.zeros(()), stratified=True)
    position = (beta.log() - math.log(0.01)) / (math.log(10.0) - math.log(0.01))
    assert sorted((position * 50).floor().long().tolist()) == list(range(50))
    # random order: the slices are not handed out in sequence
    assert (position * 50).floor().long().tolist() != list(range(50))


def kumaraswamy_cdf(t: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return 1 - (1 - t**a) ** b


def test_beta_distribution_places_log_beta_by_its_quantile_function():
    """``(a, b)``: the fraction t of the way up the log range is Kumaraswamy(a, b); the
    stratified draws of a minibatch fall one in each slice of equal probability."""
    torch.manual_seed(0)
    low, high = 0.01, 10.0
    v = torch.linspace(0, 1, 11, dtype=torch.float64)
    for a, b in ((0.4, 0.8), (2.0, 0.5)):
        t = (torch.log(beta_at(v, low, high, (a, b))) - math.log(low)) / math.log(high / low)
        torch.testing.assert_close(kumaraswamy_cdf(t, a, b), v)
        beta = sample_betas(low, high, (40,), torch.zeros((), dtype=torch.float64),
                            stratified=True, distribution=(a, b))
        t = (beta.log() - math.log(low)) / math.log(high / low)
        assert sorted((kumaraswamy_cdf(t, a, b) * 40).floor().long().tolist()) == list(range(40))
    # (1, 1) is log-uniform
    torch.testing.assert_close(beta_at(v, low, high, (1.0, 1.0)), beta_at(v, low, high))
    # (0.4, 0.8): 56 % of the draws in the lowest third of the range (log-uniform: 33 %),
    # 22 % in the top third
    third = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    below = kumaraswamy_cdf(third, 0.4, 0.8)
    assert 0.55 < float(below[0]) < 0.57 and 0.21 < float(1 - below[1]) < 0.23


def test_engine_draws_beta_from_its_distribution():
    kwargs = {"multi_rate": True, "beta_extension": 1.0}
    model, guide = VAE(10, 3, (8,), **kwargs), GaussianEncoder(10, 3, (8,), **kwargs)
    vi = AmortizedVI(model, guide, objective="multi_rate", beta_distribution=(0.4, 0.8))
    assert vi.beta_extension == 1.0  # the modules'
    assert vi.training_beta_range == pytest.approx((0.001, 10.0))
    torch.manual_seed(0)
    beta = vi.draw_beta(torch.zeros(1000, 10, dtype=torch.float64))  # exact slice edges
    t = (beta.log() - math.log(0.001)) / math.log(10_000.0)
    positions = sorted((kumaraswamy_cdf(t.double(), 0.4, 0.8) * 1000).floor().long().tolist())
    assert positions == list(range(1000))
    assert vi.config()["beta_distribution"] == [0.4, 0.8]
    assert vi.config()["beta_extension"] == 1.0
    # beta_extension=0: the range to serve is the range trained on
    kwargs["beta_extension"] = 0
    model, guide = VAE(10, 3, (8,), **kwargs), GaussianEncoder(10, 3, (8,), **kwargs)
    plain = AmortizedVI(model, guide, objective="multi_rate", beta_extension=0)
    assert plain.training_beta_range == plain.beta_range == (0.01, 10.0)


def test_beta_extension_must_agree_with_the_modules():
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    assert model.beta_extension == guide.beta_extension == DEFAULT_BETA_EXTENSION
    with pytest.raises(ValueError, match="differs from the 2 the modules were built with"):
        AmortizedVI(model, guide, objective="multi_rate", beta_extension=1.0)
    other = GaussianEncoder(10, 3, (8,), multi_rate=True, beta_extension=1.0)
    with pytest.raises(ValueError, match="built with different beta_extension"):
        AmortizedVI(model, other, objective="multi_rate")
    with pytest.raises(ValueError, match="multi_rate' only"):
        AmortizedVI(VAE(10, 3), GaussianEncoder(10, 3), beta_extension=1.0)


def test_the_documented_defaults_are_the_defaults():
    """README and docs/families/amortized.md state these defaults, measured in
    docs/benchmarks.md: a change of any of them must change those pages too."""
    model = VAE(10, 3, (8,), multi_rate=True)
    guide = GaussianEncoder(10, 3, (8,), multi_rate=True)
    config = AmortizedVI(model, guide, objective="multi_rate").config()
    assert {k: config[k] for k in ("lr", "gate_lr_multiplier", "beta_range", "beta_extension",
                                   "beta_sampling", "beta_distribution", "scheduler")} == {
        "lr": 1e-3, "gate_lr_multiplier": 10.0, "beta_range": [0.01, 10.0],
        "beta_extension": 2.0, "beta_sampling": "stratified", "beta_distribution": [1.0, 0.7],
        "scheduler": None}
    for net in (model.decoder, guide.net):
        assert all(layer.rank == 16 and layer.degree == 1 for layer in net.layers)


def test_the_engine_reads_the_range_and_extension_of_user_modules_from_their_standardizers():
    """A user-written pair needs no attributes: the engine trains over the range its
    BetaStandardizers standardize over, and refuses pairs, or settings, that disagree."""
    def pair(model_extension=1.0, guide_extension=1.0, beta_range=(0.01, 10.0)):
        model, guide = UserModel(), UserGuide()
        for module, extension in ((model, model_extension), (guide, guide_extension)):
            del module.beta_range
            module.standardize = BetaStandardizer(beta_range, extension=extension)
        return model, guide

    vi = AmortizedVI(*pair(), objective="multi_rate")
    assert vi.beta_range == (0.01, 10.0) and vi.beta_extension == 1.0
    assert vi.training_beta_range == pytest.approx((0.001, 10.0))
    with pytest.raises(ValueError, match="built with different beta_extension: model 1.0, "
                                         "guide 2.0"):
        AmortizedVI(*pair(guide_extension=2.0), objective="multi_rate")
    with pytest.raises(ValueError, match="beta_extension 2 differs from the 1 the modules"):
        AmortizedVI(*pair(), objective="multi_rate", beta_extension=2.0)
    with pytest.raises(ValueError, match=r"beta_range \(0.1, 5.0\) differs .* your own: "
                                         r"BetaStandardizer\(beta_range\)"):
        AmortizedVI(*pair(), objective="multi_rate", beta_range=(0.1, 5.0))
    model, guide = pair()
    model.beta_extension = 2.0  # an attribute that contradicts the module's standardizer
    with pytest.raises(ValueError, match="UserModel has different beta_extension: 2.0 "
                                         r"\(its beta_extension attribute\), 1.0 "
                                         r"\(BetaStandardizer 'standardize'\)"):
        AmortizedVI(model, guide, objective="multi_rate")
    model.beta_extension, model.beta_range = None, True
    with pytest.raises(TypeError, match=r"UserModel.beta_range: beta_range must be a pair "
                                        r"\(low, high\) of numbers, got True"):
        AmortizedVI(model, guide, objective="multi_rate")
    model, guide = pair()
    model.beta_range = [0.01, 10.0]  # a list is a range like any other
    assert AmortizedVI(model, guide, objective="multi_rate").beta_range == (0.01, 10.0)
    guide.standardize = nn.Identity()
    with pytest.raises(ValueError, match=r"the guide \(UserGuide\) has no BetaStandardizer"):
        AmortizedVI(model, guide, objective="multi_rate")


def test_a_beta_that_is_not_positive_and_finite_is_refused_by_the_standardizer():
    model = UserModel()
    x = torch.zeros(3, 6)
    for beta in (0.0, -1.0, float("inf"), torch.tensor([1.0, float("nan"), 2.0])):
        with pytest.raises(ValueError, match="beta must be positive and finite"):
            pyro.poutine.trace(model).get_trace(x, beta=beta)
    with pytest.raises(ValueError, match="beta must be positive and finite"):
        VAE(6, 2, (4,), multi_rate=True).decode(torch.zeros(3, 2), beta=0.0)
    standardize = BetaStandardizer((0.01, 10.0), extension=0)
    assert float(standardize(0.01)) == pytest.approx(-(3**0.5))  # a number is taken as is


@pytest.mark.parametrize("kwargs, message", [
    ({"gate_lr_multiplier": 0.0}, "gate_lr_multiplier must be > 0"),
    ({"gate_lr_multiplier": "10"}, "gate_lr_multiplier must be a number"),
    ({"beta_sampling": "epoch"}, "beta_sampling must be one of"),
    ({"beta_distribution": "arcsine"}, "beta_distribution must be 'log_uniform' or a pair"),
    ({"beta_distribution": (0.5,)}, "beta_distribution must be 'log_uniform' or a pair"),
    ({"beta_distribution": (0.0, 1.0)}, "beta_distribution exponents must be positive"),
    ({"beta_extension": -1.0}, "beta_extension must be a finite number >= 0"),
    ({"beta_extension": float("inf")}, "beta_extension must be a finite number >= 0"),
    ({"beta_extension": "2"}, "beta_extension must be a number of decades"),
    ({"scheduler": "linear"}, "scheduler must be one of"),
    ({"optimizer": "adagrad"}, "optimizer must be one of"),
    ({"total_steps": 0}, "total_steps must be >= 1"),
])
def test_bad_engine_settings_are_named(kwargs, message):
    model, guide = VAE(10, 3, (8,), multi_rate=True), GaussianEncoder(10, 3, (8,), multi_rate=True)
    with pytest.raises((ValueError, TypeError), match=message):
        AmortizedVI(model, guide, objective="multi_rate", **kwargs)


def rate_drop_on_digits(**engine_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a small MR-VAE for 5 epochs on the embedded digits; return the rate of each
    of the 250 test digits at the smallest and the largest β (16 draws each)."""
    from posterity.datasets import binarized_digits
    from posterity.infer.importance import weighted_particles

    train, _, test = binarized_digits()
    pyro.set_rng_seed(0)
    model = VAE(64, 8, (64,), multi_rate=True)
    guide = GaussianEncoder(64, 8, (64,), multi_rate=True)
    AmortizedVI(model, guide, objective="multi_rate", **engine_kwargs).fit(
        train, epochs=5, batch_size=50, progress=False, seed=0
    )
    low, high = model.beta_range
    pyro.set_rng_seed(1)
    with torch.no_grad():
        return tuple(
            -weighted_particles(model, guide, (test,), {"beta": test.new_full((len(test),), b)},
                                num_particles=16, plate_nesting=1).log_density_ratio.mean(0)
            for b in (low, high)
        )


def test_the_gates_respond_to_beta_with_the_default_settings():
    """Library defaults, 5 epochs on the embedded digits: the β gates must remove at
    least half of the rate at the top of the range (measured: 10.0 -> 0.25 nats), and
    the fast gate slopes (``gate_lr_multiplier``) must make them respond more than at
    the base learning rate (6.8 -> 0.62 nats at multiplier 1; the staggered initial
    gates already respond to β, so that run passes the first check). With flat initial
    gates, fast biases and multiplier 1 the rate hardly moved (1.31 -> 1.09 nats, the
    failure of issue 12). Both bounds are one-sided at 4 standard errors of paired
    differences over 250 test digits x 16 draws."""
    low, high = rate_drop_on_digits()
    drop = low - high
    stderr = float(drop.std() / math.sqrt(len(drop)))
    assert float(drop.mean()) - 4 * stderr > 0.5 * float(low.mean()), (
        float(low.mean()), float(high.mean()), stderr)
    slow_low, slow_high = rate_drop_on_digits(gate_lr_multiplier=1.0)
    gain = drop - (slow_low - slow_high)
    assert float(gain.mean()) - 4 * float(gain.std() / math.sqrt(len(gain))) > 0, (
        float(slow_low.mean()), float(slow_high.mean()))
