"""State-space models written from the public protocol alone (tests/user_models) run in
every SMC engine; models that break the protocol get an error naming the method.

Engines: ParticleFilter, PaRIS, ParticleGibbs, PPG, ScoreAscent (both estimators) and
check_model, each with small N and T.
"""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from user_models.ssm_models import (
    ColonIndexed,
    ConstantVelocity,
    Kitagawa,
    NoBound,
    ScalarNoEvent,
    WrongBound,
    simulate,
)

from posterity.infer.smc import (
    PPG,
    PaRIS,
    ParticleFilter,
    ParticleGibbs,
    ScoreAscent,
    check_model,
)
from posterity.models import LinearGaussianSSM

CONFORMING = {"kitagawa": (Kitagawa, 1, 1), "tracking": (ConstantVelocity, 4, 2),
              "no_bound": (NoBound, 2, 1), "wrong_bound": (WrongBound, 1, 1)}


def state(x_prev, x, y, t):
    return x


def run_engine(engine: str, model, ys):
    """One small run of ``engine``; returns the tensor it estimates."""
    if engine == "filter":
        return ParticleFilter(model, 64, progress=False).run(ys).filter_mean
    if engine == "paris":
        return PaRIS(model, state, 64, progress=False).run(ys).estimate
    if engine == "particle_gibbs":
        return ParticleGibbs(model, 16, progress=False).run(ys, num_iters=3, num_chains=2).paths
    if engine == "ppg":
        return PPG(model, state, 16, num_iters=3, burn_in=1, progress=False).run(ys).estimate
    estimator = engine.split("_")[-1]
    result = ScoreAscent(model, estimator, num_particles=16, progress=False).fit(ys, 2)
    return torch.stack([torch.tensor(result.objective, dtype=ys.dtype)])


ENGINES = ["filter", "paris", "particle_gibbs", "ppg", "score_ascent_paris", "score_ascent_ppg"]


@pytest.mark.parametrize("name", sorted(CONFORMING))
def test_dimensions_are_read_from_the_laws(name):
    make, state_dim, obs_dim = CONFORMING[name]
    model = make()
    assert (model.state_dim, model.obs_dim) == (state_dim, obs_dim)
    report = check_model(model, simulate(model, 10))
    assert report.ok, str(report)
    assert (report.state_dim, report.obs_dim) == (state_dim, obs_dim)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(CONFORMING))
def test_user_model_runs_in_every_engine(name, engine):
    make, state_dim, _ = CONFORMING[name]
    model = make()
    ys = simulate(model, 12)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ESS warnings at N = 16
        value = run_engine(engine, model, ys)
    assert torch.isfinite(value).all()
    if engine == "particle_gibbs":
        assert value.shape == (2, 3, 12, state_dim)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["kitagawa", "tracking"])
def test_float64_model_and_data_give_float64_results(name, engine):
    model = CONFORMING[name][0]().double()
    ys = simulate(model, 10)
    assert ys.dtype == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert run_engine(engine, model, ys).dtype == torch.float64


def test_observations_are_converted_to_the_model_dtype():
    model = Kitagawa()  # float32 parameters
    ys = simulate(model, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from_float64 = ParticleFilter(model, 64, progress=False).run(ys.double())
        from_numpy = ParticleFilter(model, 64, progress=False).run(ys.double().numpy())
    assert from_float64.filter_mean.dtype == torch.float32
    assert from_numpy.filter_mean.shape == (10, 1)
    flat = ParticleFilter(model, 64, progress=False).run(np.asarray(ys[:, 0]))
    assert flat.filter_mean.shape == (10, 1)


class RecordingTracker(ConstantVelocity):
    """The tracking model, noting the shape of every state it is called with."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def transition(self, x_prev, t):
        self.shapes.add(tuple(x_prev.shape))
        return super().transition(x_prev, t)


def test_every_engine_calls_the_model_with_trailing_state_dimension():
    model = RecordingTracker()
    ys = simulate(model, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for engine in ENGINES:
            run_engine(engine, model, ys)
        model.simulate(3)
        pyro.poutine.trace(model).get_trace(ys)
    assert all(shape[-1] == 4 for shape in model.shapes), model.shapes
    assert {len(shape) for shape in model.shapes} >= {1, 2, 3}  # [d], [N, d], [C, N, d]


@pytest.mark.parametrize("engine", ENGINES)
def test_scalar_laws_without_to_event_are_named(engine):
    model = ScalarNoEvent()
    with pytest.raises(ValueError, match=r"initial\(\) returned a law with event_shape \(\); "
                                         r"expected \(state_dim,\) — add \.to_event\(1\)"):
        run_engine(engine, model, torch.randn(5, 1))
    assert "to_event(1)" in check_model(model).problems[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_colon_indexing_is_named(engine):
    model = ColonIndexed()
    with pytest.raises(ValueError, match=r"transition\(x_prev, t\).*x\[\.\.\., i\], not x\[:, i\]"):
        run_engine(engine, model, torch.randn(5, 1))


def test_model_without_bound_uses_the_exact_kernel_and_says_so_when_it_is_slow():
    model = NoBound()
    with pytest.raises(ValueError, match="backward='rejection' needs the model's "
                                         r"transition_log_bound\(t\)"):
        PaRIS(model, state, 100, backward="rejection")
    with pytest.warns(UserWarning, match=r"O\(N²\)"):
        PaRIS(model, state, 2000, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        smoother = PaRIS(model, state, 1999, progress=False)
        PaRIS(model, state, 4000, backward="exact", progress=False)
    assert smoother.backward.method == "exact"


@torch.no_grad()
def test_a_wrong_bound_is_caught_and_the_estimate_stays_unbiased():
    """The bound is 3 nats too low: PaRIS warns, records the violations and falls back to
    the exact kernel, so its estimate of E[Σ x_t | y] agrees with the RTS smoother (the
    same linear-Gaussian model) within Monte Carlo error."""
    model = WrongBound()
    exact_model = LinearGaussianSSM(1, 1, A=0.9, Q=0.7**2, C=1.0, R=1.0)
    ys = simulate(model, 20, seed=3)
    exact = exact_model.rts_smoother(ys)["mean"].sum()
    report = check_model(model, ys)
    assert report.ok and "not an upper bound" in report.warnings[0]
    pyro.set_rng_seed(4)
    with pytest.warns(RuntimeWarning, match="not an upper bound: a log transition density "
                                            "exceeds it by"):
        first = PaRIS(model, state, 400, backward="rejection", progress=False).run(ys)
    assert first.bound_violations and all(e > 2.0 for _, e in first.bound_violations)
    runs = [first.estimate.sum()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(7):
            runs.append(PaRIS(model, state, 400, backward="rejection", progress=False)
                        .run(ys).estimate.sum())
    runs = torch.stack(runs)
    stderr = runs.std() / math.sqrt(len(runs))
    assert abs(runs.mean() - exact) < 5 * stderr + 0.05, (runs.mean(), exact, stderr)


def test_a_correct_bound_records_no_violation():
    model = ConstantVelocity()
    ys = simulate(model, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = PaRIS(model, state, 400, backward="rejection", progress=False).run(ys)
    assert result.bound_violations == []


@pytest.mark.parametrize("make_h, message", [
    (lambda: lambda xp, x, y, t: x * float("nan") if t == 3 else x,
     r"h\(x_prev, x, y, t\) returned NaN at time step 3"),
    (lambda: lambda xp, x, y, t: x[:1], r"h\(x_prev, x, y, t\) must return \[num_particles, k\]"),
    (lambda: lambda xp, x, y, t: x.mean(0), r"for x of shape \(\d+, 1\), got \(1,\) at"),
    (lambda: lambda xp, x, y, t: 1.0, r"h\(x_prev, x, y, t\) must return a Tensor"),
])
@pytest.mark.parametrize("engine", ["paris", "ppg"])
def test_a_bad_additive_functional_is_named(engine, make_h, message):
    model = Kitagawa()
    ys = simulate(model, 6)
    error = TypeError if "Tensor" in message else ValueError
    with pytest.raises(error, match=message):
        if engine == "paris":
            PaRIS(model, make_h(), 32, progress=False).run(ys)
        else:
            PPG(model, make_h(), 16, num_iters=2, burn_in=1, progress=False).run(ys)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: ParticleFilter(object()), TypeError, "ssm must be a posterity.models"),
    (lambda m: check_model("model"), TypeError, "ssm must be a posterity.models"),
    (lambda m: ParticleFilter(m, 10, progress=False).run(torch.randn(5, 3)), ValueError,
     r"ys must have shape \[T, 1\]"),
    (lambda m: ParticleFilter(m, 10, progress=False).run("abc"), TypeError, "ys must be"),
    (lambda m: PaRIS(m, "h"), TypeError, "h must be a callable"),
    (lambda m: PPG(m, 3), TypeError, "h must be a callable"),
    (lambda m: PaRIS(m, state, 10, max_trials=0), ValueError, "max_trials must be"),
    (lambda m: ScoreAscent(m, "ppg", sweeps_per_update=0), ValueError,
     "sweeps_per_update must be >= 1"),
    (lambda m: ScoreAscent(m, "paris", burn_in=2), ValueError, "burn_in moves PPG"),
    (lambda m: ParticleGibbs(m, 10, progress=False).run(torch.randn(5), num_iters=4,
                                                       burn_in=4),
     ValueError, r"burn_in \(4\) must be < num_iters"),
])
def test_bad_inputs_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(Kitagawa())


def test_check_model_names_each_failing_method_once():
    report = check_model(ColonIndexed())
    assert not report.ok
    assert len(report.problems) == 1  # at the first batch shape that shows it
    assert report.problems[0].startswith("transition(x_prev, t)")
    assert "index coordinates with x[..., i]" in report.problems[0]
    with pytest.raises(ValueError, match="does not meet the StateSpaceModel protocol"):
        report.raise_if_failed()


def test_check_model_lists_every_method_that_forgot_to_event():
    problems = check_model(ScalarNoEvent()).problems
    assert [p.split(" ")[0] for p in problems] == ["initial()", "transition(x_prev,",
                                                   "emission(x,"]
    assert "a scalar state is a vector of length 1" in problems[1]
    assert "a scalar observation is a vector of length 1" in problems[2]


class Misspelt(ColonIndexed):
    """A transition with a typo: its NameError is named, without the indexing hint."""

    def transition(self, x_prev, t):
        return pyro.distributions.Normal(x_prev * rho, 0.3).to_event(1)  # noqa: F821 (typo)


def test_check_model_gives_the_indexing_hint_only_to_shape_errors():
    report = check_model(Misspelt())
    assert report.problems and all("NameError: name 'rho' is not defined" in p
                                   for p in report.problems)
    assert not any("index coordinates" in p for p in report.problems)


class BrokenEmission(ColonIndexed):
    def transition(self, x_prev, t):
        return pyro.distributions.Normal(x_prev, 0.3).to_event(1)

    def emission(self, x, t):
        return pyro.distributions.Normal(x[..., :1] * scale, 0.5).to_event(1)  # noqa: F821


def test_check_model_with_observations_reports_a_failing_emission_instead_of_raising():
    report = check_model(BrokenEmission(), torch.zeros(5, 1))
    assert not report.ok and any(p.startswith("emission(x, t)") and "NameError" in p
                                 for p in report.problems), report.problems


def locally_optimal_proposal(ssm: LinearGaussianSSM):
    """``p(x_t | x_{t-1}, y_t)`` of a 1-D linear Gaussian model, written from the
    ``proposal=`` docstring: batched over the particles of ``x_prev``, the state an event
    dimension; at ``t = 0`` unbatched (the filter draws ``N`` from it)."""
    A, Q, C, R = (float(m) for m in (ssm.A, ssm.Q, ssm.C, ssm.R))
    m0, P0 = float(ssm.m0), float(ssm.P0)

    def proposal(x_prev, t, y):
        mean, var = (m0, P0) if x_prev is None else (A * x_prev, Q)
        post_var = 1 / (1 / var + C**2 / R)
        loc = post_var * (mean / var + C * y / R)
        return pyro.distributions.Normal(loc * torch.ones_like(y), post_var**0.5).to_event(1)

    return proposal


def test_a_proposal_of_ones_own_gives_the_kalman_likelihood_with_less_spread():
    """With the locally optimal proposal each weight is ``p(y_t | x_{t-1})``: unbiased for
    the likelihood, with a smaller spread over seeds than the bootstrap filter's."""
    ssm = LinearGaussianSSM(A=0.9, Q=0.5, C=1.0, R=0.1).double()
    torch.manual_seed(0)
    ys = ssm.simulate(T=50).observations
    with torch.no_grad():
        exact = float(ssm.kalman_filter(ys)["log_likelihood"])
    estimates = {}
    for name, proposal in (("bootstrap", None), ("optimal", locally_optimal_proposal(ssm))):
        runs = []
        for seed in range(20):
            torch.manual_seed(seed)
            pf = ParticleFilter(ssm, num_particles=100, proposal=proposal, progress=False)
            runs.append(float(pf.run(ys).log_evidence))
        estimates[name] = np.array(runs)
    optimal = estimates["optimal"]
    # the log of an unbiased estimate is biased low by about var / 2
    error = 3 * optimal.std(ddof=1) / math.sqrt(len(optimal)) + optimal.var(ddof=1) / 2
    assert abs(optimal.mean() - exact) < error
    assert optimal.std() < estimates["bootstrap"].std() / 2


@pytest.mark.parametrize("proposal, message", [
    (lambda x_prev, t, y: pyro.distributions.Normal(torch.zeros(1, dtype=y.dtype), 1.0),
     "log_prob gave shape.*to_event"),
    (lambda x_prev, t, y: pyro.distributions.Normal(
        torch.zeros(7, 1, dtype=y.dtype), 1.0).to_event(1), "draws of shape"),
    (lambda x_prev, t, y: pyro.distributions.Normal(torch.zeros(1), 1.0).to_event(1),
     "float32 particles for torch.float64"),
    (lambda x_prev, t, y: torch.zeros(1), "must return a distribution"),
])
def test_a_proposal_that_breaks_the_shapes_is_named(proposal, message):
    ssm = LinearGaussianSSM().double()
    ys = ssm.simulate(T=5).observations
    with pytest.raises((ValueError, TypeError), match=message):
        ParticleFilter(ssm, num_particles=10, proposal=proposal, progress=False).run(ys)


def test_a_proposal_that_is_not_callable_is_refused():
    with pytest.raises(TypeError, match="proposal must be a callable"):
        ParticleFilter(LinearGaussianSSM(), proposal="optimal")


@pytest.mark.parametrize("engine", ["paris", "ppg"])
def test_an_indicator_functional_is_averaged_as_a_probability(engine):
    """``h = 1{x > 0}`` (bool) estimates the expected number of positive states: the
    same numbers as the float indicator, from the same random draws."""
    model = Kitagawa()
    ys = simulate(model, 8)

    def estimate(h):
        pyro.set_rng_seed(5)
        if engine == "paris":
            return PaRIS(model, h, 32, progress=False).run(ys).estimate
        return PPG(model, h, 16, num_iters=3, burn_in=1, progress=False).run(ys).estimate

    as_bool = estimate(lambda xp, x, y, t: x > 0)
    torch.testing.assert_close(as_bool, estimate(lambda xp, x, y, t: (x > 0).to(x.dtype)))
    assert as_bool.dtype == ys.dtype


class PoissonCounts(Kitagawa):
    """Counts whose rate follows the Kitagawa state."""

    def emission(self, x, t):
        return pyro.distributions.Poisson(torch.exp(0.1 * x.clamp(-20, 20))).to_event(1)


def test_an_observation_outside_the_emissions_support_is_named_with_its_time_step():
    model = PoissonCounts()
    ys = torch.tensor([[1.0], [0.0], [2.0], [2.5], [1.0]])
    problems = check_model(model, ys).problems
    assert len(problems) == 1 and problems[0].startswith(
        "emission_log_prob(x, y, t) raised ValueError at time step 3 (y = [2.5])")
    with pytest.raises(ValueError, match=r"emission_log_prob\(x, y, t\) at time step 3 "
                                         r"\(y = \[2.5\]\)"):
        ParticleFilter(model, 16, progress=False).run(ys)


class Float32Emission(Kitagawa):
    """A float64 model whose emission is built in float32."""

    def emission(self, x, t):
        return pyro.distributions.Normal(x.float(), 1.0).to_event(1)


def test_check_model_with_observations_agrees_with_the_engines_on_dtypes():
    model = Float32Emission().double()
    ys = simulate(Kitagawa().double(), 5)
    problems = check_model(model, ys).problems
    assert any("emission(x, t) draws torch.float32" in p for p in problems)
    with pytest.raises(TypeError, match="torch.float32"):
        ParticleFilter(model, 16, progress=False).run(ys)


class NegativeScale(Kitagawa):
    def transition(self, x_prev, t):
        return pyro.distributions.Normal(x_prev, -0.5 * torch.ones_like(x_prev)).to_event(1)


def test_a_parameter_outside_its_support_gets_the_constraint_hint_not_the_indexing_one():
    (problem,) = check_model(NegativeScale()).problems
    assert problem.startswith("transition(x_prev, t)") and "constraints.positive" in problem
    assert "x[..., i]" not in problem


class CategoricalEmission(Kitagawa):
    """Integer observations: Categorical draws are int64 whatever the model's dtype."""

    def emission(self, x, t):
        logits = torch.stack([x, -x, torch.zeros_like(x)], -1)  # [..., 1, 3]
        return pyro.distributions.Categorical(logits=logits).to_event(1)


def test_integer_observations_of_a_categorical_emission_are_accepted():
    model = CategoricalEmission().double()
    ys = torch.tensor([[0.0], [2.0], [1.0], [0.0]], dtype=torch.float64)
    assert check_model(model, ys).ok, check_model(model, ys)
    assert torch.isfinite(ParticleFilter(model, 32, progress=False).run(ys).log_evidence)
