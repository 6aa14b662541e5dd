"""Particle methods with their particles spread over the ranks of a process group.

Global resampling is checked exactly on a simulated world of three ranks (one process);
the filter, PaRIS and score ascent run on two gloo processes spawned by the test, and
their estimates are held to exact Kalman / RTS answers within their Monte Carlo error
(the spread of seeded replicates). All two-rank checks share one spawned job.
"""

import math

import pyro
import pytest
import torch
from user_models.ssm_models import ConstantVelocity, simulate

from posterity.infer import distributed
from posterity.infer.smc import PaRIS, ParticleFilter, ScoreAscent
from posterity.infer.smc import across_ranks as ranks
from posterity.models import LinearGaussianSSM

# --- global resampling on a simulated world (one process) ----------------------------------

WORLD, SHARE = 3, 4  # three ranks of four particles


def world_weights(layout: str = "unequal") -> torch.Tensor:
    """Global weights ``[3, 4]`` normalized over all ranks: the ranks' totals unequal
    (0.55, 0.15, 0.30) with a zero weight, or the middle rank without any weight."""
    w = torch.tensor([[0.20, 0.05, 0.25, 0.05], [0.02, 0.08, 0.0, 0.05],
                      [0.10, 0.07, 0.03, 0.10]], dtype=torch.float64)
    if layout == "empty rank":
        w[1] = 0.0
    return w / w.sum()


def simulate_world(scheme: str, weights: torch.Tensor, seed: int):
    """Every rank's steps of :func:`ranks.resample` without communication: the common
    generator seeded alike on every rank, each rank's own draws from torch's."""
    num = weights.numel()
    summaries = torch.stack([ranks.summarize(w, num) for w in weights])
    results = [ranks.offspring_counts(scheme, summaries, num,
                                      torch.Generator().manual_seed(seed))
               for _ in range(2)]
    counts, shared = results[0]
    for other_counts, other_shared in results[1:]:  # the ranks agree
        assert torch.equal(other_counts, counts) and torch.equal(other_shared, shared)
    offspring = [ranks.local_offspring(scheme, weights[r], summaries, r, num, shared)
                 for r in range(WORLD)]
    return counts, offspring


@pytest.mark.parametrize("layout", ["unequal", "empty rank"])
@pytest.mark.parametrize("scheme", ["systematic", "stratified", "multinomial", "residual"])
def test_global_resampling_is_unbiased_and_leaves_every_rank_its_share(scheme, layout):
    weights = world_weights(layout)
    num = weights.numel()
    torch.manual_seed(0)
    draws = []
    for seed in range(600):
        counts, offspring = simulate_world(scheme, weights, seed)
        assert [len(o) for o in offspring] == counts.tolist() and int(counts.sum()) == num
        send, receive, offsets = ranks.transfer_plan(counts, SHARE)
        assert ((counts - send + receive) == SHARE).all()  # every rank ends with its share
        assert offsets.tolist() == [0, *receive.cumsum(0)[:-1].tolist()]
        draws.append(torch.cat([torch.bincount(o, minlength=SHARE) for o in offspring]))
    draws = torch.stack(draws).double()
    expected = num * weights.flatten()
    stderr = draws.std(0) / math.sqrt(len(draws))
    # E[offspring of i] = N W_i; 4 standard errors (+ rounding where a count never varies)
    assert ((draws.mean(0) - expected).abs() <= 4 * stderr + 1e-9).all(), draws.mean(0)
    assert (draws[:, weights.flatten() == 0] == 0).all()


def test_global_systematic_is_the_one_process_grid():
    """Each rank keeps exactly the points of the global grid (k + U) / N that fall in its
    slice of the CDF: concatenated, the one-process systematic draw with the same U."""
    weights = world_weights()
    num = weights.numel()
    for seed in range(200):
        counts, offspring = simulate_world("systematic", weights, seed)
        u = torch.rand((), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        grid = (torch.arange(num, dtype=torch.float64) + u) / num
        one_process = torch.searchsorted(weights.flatten().cumsum(0), grid)
        spread = torch.cat([o + r * SHARE for r, o in enumerate(offspring)])
        assert torch.equal(spread, one_process)


def test_normalizing_returns_the_weighted_moments_of_the_cloud():
    """In one process ``normalize`` is the plain normalization, and the moments it
    carries are ``Σ W_i x_i`` and ``Σ W_i x_i²``, even for log-weights far from 0."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(50, 3, dtype=torch.float64, generator=generator)
    log_w = 800 + torch.randn(50, dtype=torch.float64, generator=generator)
    normalized = ranks.normalize(log_w, x)
    weights = torch.softmax(log_w, 0)
    torch.testing.assert_close(normalized.log_normalizer, torch.logsumexp(log_w, 0))
    torch.testing.assert_close(normalized.log_weights.exp(), weights)
    assert normalized.ess == pytest.approx(1 / float(weights @ weights))
    torch.testing.assert_close(normalized.moments, torch.cat([weights @ x, weights @ x**2]))
    assert ranks.normalize(log_w).moments is None


def test_rebalancing_needs_counts_that_sum_to_the_world():
    with pytest.raises(ValueError, match="do not sum"):
        ranks.transfer_plan(torch.tensor([5, 4, 4]), SHARE)


# --- two ranks ---------------------------------------------------------------------------

REPLICATES = 60


def lgssm() -> LinearGaussianSSM:
    return LinearGaussianSSM(1, 1, A=0.9, Q=0.5, C=1.0, R=1.0)


def sum_of_states(x_prev, x, y, t):
    return x


def two_rank_job() -> dict:
    """Everything the two-rank tests check, run once on each rank."""
    out: dict = {}
    ssm = lgssm()
    pyro.set_rng_seed(0)  # the same series on both ranks
    with torch.no_grad():
        ys = ssm.simulate(20).observations
    # both ranks seeded alike: the filter must still draw different particles per rank
    result = ParticleFilter(ssm, 200, progress=False).run(ys)
    out["final_particles"] = result.particles
    pyro.set_rng_seed(distributed.rank_seed(1))
    with torch.no_grad():
        runs = [ParticleFilter(ssm, 1000, progress=False).run(ys) for _ in range(REPLICATES)]
    out["log_evidence"] = torch.stack([r.log_evidence for r in runs])
    out["filter_mean"] = torch.stack([r.filter_mean for r in runs])
    out["resampled"] = torch.stack([r.resampled for r in runs]).sum()
    history = ParticleFilter(ssm, 100, resampling="stratified", keep_history=True,
                             progress=False).run(ys).history
    out["history_shapes"] = {k: tuple(v.shape) for k, v in history.items()}
    out["ancestor_range"] = (int(history["ancestors"].min()), int(history["ancestors"].max()))
    pyro.set_rng_seed(3)  # seeded alike: the ranks' own filters must still differ
    local = ParticleFilter(ssm, 101, across_ranks=False, progress=False).run(ys)
    out["local_filter"] = (tuple(local.particles.shape), float(local.log_evidence))
    try:  # rank 1 passes one observation fewer: refused on both ranks, no hang
        ParticleFilter(ssm, 100, progress=False).run(ys[: 20 - distributed.rank()])
    except ValueError as error:
        out["unequal_ys"] = str(error)
    errors = []
    for make in (lambda: ParticleFilter(ssm, 101, progress=False),
                 lambda: PaRIS(ssm, sum_of_states, 101, progress=False),
                 lambda: ScoreAscent(ssm, "paris", 101, progress=False)):
        try:
            make()
        except ValueError as error:
            errors.append(str(error))
    out["errors"] = errors
    with torch.no_grad():
        out["paris"] = torch.stack([
            PaRIS(ssm, sum_of_states, 1000, backward="rejection", progress=False)
            .run(ys).estimate for _ in range(10)])
    for estimator in ("paris", "ppg"):
        scores = []
        for _ in range(10):
            learner = ScoreAscent(ssm, estimator, num_particles=300, progress=False)
            if estimator == "ppg":  # two path moves: past the initial path's influence
                for _ in range(2):
                    with torch.no_grad():
                        learner.objective(ys)
            scores.append(torch.cat([g.flatten() for g in learner.score(ys).values()]))
        out[f"score_{estimator}"] = torch.stack(scores)
    learner = ScoreAscent(lgssm(), "paris", num_particles=100, lr=0.01, progress=False)
    out["objectives"] = [learner.step(ys)["objective"] for _ in range(2)]
    out["parameters"] = torch.cat([p.detach().flatten() for p in learner.ssm.parameters()])
    out["validate"] = learner.validate(ys)["log_evidence"]
    fitted = ScoreAscent(lgssm(), "paris", num_particles=100, lr=0.01, progress=False)
    out["fit_objective"] = fitted.fit(ys, num_steps=2, seed=3).objective
    out["fit_parameters"] = torch.cat([p.detach().flatten() for p in fitted.ssm.parameters()])
    out.update(user_model_runs())
    out["moving"] = {scheme: moving_against_exchange(scheme) for scheme in ranks.SCHEMES}
    out["moving_conditional"] = {heavy: moving_against_exchange("conditional", heavy)
                                 for heavy in (0, 1)}
    return out


def moving_against_exchange(scheme: str, heavy: int = 0) -> dict:
    """One resampling step both ways on unbalanced ranks (rank ``heavy`` holds 3/4 of
    the weight): the surplus exchanged before a deterministic move (``resample``, then
    ``normalize``), or moved after it inside the normalizing all-gather
    (``resample_in_place``, then ``normalize_moving``), from the same shared draws.
    ``scheme="conditional"``: conditional resampling, the last rank's last row the
    reference (replaced by the reference's next state after the move)."""
    generator = torch.Generator().manual_seed(11)
    me = distributed.rank()
    particles = torch.linspace(-1, 1, 24).reshape(12, 2)[6 * me:6 * me + 6] + me
    share = 3.0 if me == heavy else 1.0
    log_weights = ranks.normalize(torch.log(share * torch.arange(1.0, 7.0)))[1]
    conditional = scheme == "conditional"

    def move(x):
        x = 2 * x + 1
        if conditional and me == 1:
            x = torch.cat([x[:-1], torch.full((1, 2), 7.0)])
        return x, -(x ** 2).sum(-1)

    before, own_before = generator.get_state(), torch.random.get_rng_state()
    x, ancestors = (ranks.conditional_resample(particles, log_weights, generator)
                    if conditional else ranks.resample(particles, log_weights, scheme,
                                                       generator))
    x, increment = move(x)
    exchanged = (*ranks.normalize(increment - math.log(12), x)[:5], x, ancestors)
    generator.set_state(before)
    torch.random.set_rng_state(own_before)  # the schemes' rank-own draws, alike too
    parents, indices, pending = (
        ranks.conditional_resample_in_place(particles, log_weights, generator)
        if conditional else ranks.resample_in_place(particles, log_weights, scheme,
                                                    generator))
    x, increment = move(parents)
    moved = ranks.normalize_moving(increment - math.log(12), x, indices, pending, True)
    keep = int(pending.sizes[me])
    return {"exchanged": exchanged, "moved": (*moved[:5], *moved.rows),
            "surplus": pending.own > keep}


def user_model_runs() -> dict:
    """A 4-d state-space model written from the docs (not a built-in), in float64:
    replicated log-evidence estimates and a PaRIS estimate."""
    model, ys = ConstantVelocity().double(), simulate(ConstantVelocity(), 15, seed=2).double()
    pyro.set_rng_seed(distributed.rank_seed(5))
    with torch.no_grad():
        runs = [ParticleFilter(model, 400, progress=False).run(ys) for _ in range(USER_REPS)]
        smoothed = PaRIS(model, sum_of_states, 400, progress=False).run(ys).estimate
    return {"user_log_evidence": torch.stack([r.log_evidence for r in runs]),
            "user_dtypes": {str(runs[0].log_evidence.dtype), str(runs[0].filter_mean.dtype),
                            str(smoothed.dtype)}}


USER_REPS = 20


def test_a_user_written_model_in_float64_filters_across_ranks_like_one_process(two_ranks):
    """The 2-rank log-evidence of a user-written model has the law of the one-process
    filter with the same N: the means of 20 replicates each agree within 4 standard
    errors of their difference, and everything stays float64."""
    model, ys = ConstantVelocity().double(), simulate(ConstantVelocity(), 15, seed=2).double()
    pyro.set_rng_seed(6)
    with torch.no_grad():
        alone = torch.stack([ParticleFilter(model, 400, progress=False).run(ys).log_evidence
                             for _ in range(USER_REPS)])
    spread = two_ranks[0]["user_log_evidence"]
    assert torch.equal(spread, two_ranks[1]["user_log_evidence"])  # global, the same
    stderr = math.sqrt(spread.var() / USER_REPS + alone.var() / USER_REPS)
    assert abs(float(spread.mean() - alone.mean())) < 4 * stderr, (spread, alone)
    assert two_ranks[0]["user_dtypes"] == {"torch.float64"}


@pytest.mark.parametrize("scheme", ranks.SCHEMES)
def test_surplus_moved_inside_the_normalizing_gather_equals_the_exchange(two_ranks, scheme):
    """Moving the surplus offspring after propagation, inside the all-gather that
    normalizes the weights (one collective per step), gives every rank the same rows,
    ancestors, weights, evidence, ESS, totals and filtering moments as exchanging them
    first."""
    check_moved_like_exchanged([rank["moving"][scheme] for rank in two_ranks])


@pytest.mark.parametrize("heavy", [0, 1])
def test_conditional_resampling_moved_inside_the_gather_equals_the_exchange(two_ranks,
                                                                           heavy):
    """The same for conditional resampling, with the surplus on the rank before the
    reference's and on the reference's own: the reference keeps the last global slot."""
    results = [rank["moving_conditional"][heavy] for rank in two_ranks]
    check_moved_like_exchanged(results)
    last = results[1]["moved"]
    assert torch.equal(last[5][-1], torch.full((2,), 7.0)) and int(last[6][-1]) == 11


def check_moved_like_exchanged(results: list[dict]) -> None:
    assert {result["surplus"] for result in results} == {True, False}
    for result in results:
        exchanged, moved = result["exchanged"], result["moved"]
        log_z, log_w, ess, totals, moments, x, ancestors = moved
        torch.testing.assert_close(log_z, exchanged[0])
        torch.testing.assert_close(log_w, exchanged[1])
        assert ess == pytest.approx(exchanged[2], rel=1e-6)  # float32 weights
        torch.testing.assert_close(totals, exchanged[3])
        torch.testing.assert_close(moments, exchanged[4])  # [E x, E x²], global
        torch.testing.assert_close(x, exchanged[5], rtol=0, atol=0)
        assert torch.equal(ancestors, exchanged[6])


@pytest.fixture(scope="module")
def two_ranks():
    return distributed.run_local(two_rank_job, 2, timeout=180)


@pytest.fixture(scope="module")
def exact():
    ssm = lgssm()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        ys = ssm.simulate(20).observations
    params = dict(ssm.named_parameters())
    kalman = ssm.kalman_filter(ys)
    score = torch.autograd.grad(kalman["log_likelihood"], list(params.values()))
    with torch.no_grad():
        smoothed_sum = ssm.rts_smoother(ys)["mean"].sum(0)
    return {"log_z": kalman["log_likelihood"].detach(), "mean": kalman["mean"].detach(),
            "score": torch.cat([g.flatten() for g in score]), "sum": smoothed_sum}


def test_two_rank_filter_evidence_is_unbiased(two_ranks, exact):
    first, second = two_ranks
    assert torch.equal(first["log_evidence"], second["log_evidence"])  # global, alike
    assert int(first["resampled"]) > 0  # the runs resampled across ranks
    ratios = (first["log_evidence"] - exact["log_z"]).double().exp()
    stderr = ratios.std() / math.sqrt(len(ratios))
    assert abs(float(ratios.mean()) - 1) < 4 * float(stderr), (ratios.mean(), stderr)


def test_two_rank_filtering_means_match_kalman(two_ranks, exact):
    first, second = two_ranks
    assert torch.equal(first["filter_mean"], second["filter_mean"])
    runs = first["filter_mean"]
    stderr = runs.std(0) / math.sqrt(runs.shape[0])
    # 5 standard errors: a Bonferroni bound over the 20 comparisons
    assert ((runs.mean(0) - exact["mean"]).abs() < 5 * stderr).all()


def test_ranks_seeded_alike_still_draw_their_own_particles(two_ranks):
    first, second = two_ranks
    assert first["final_particles"].shape == (100, 1)
    assert not torch.equal(first["final_particles"], second["final_particles"])


def test_two_rank_history_is_local_with_global_ancestors(two_ranks):
    first, _ = two_ranks
    assert first["history_shapes"] == {"particles": (20, 50, 1), "log_weights": (20, 50),
                                       "ancestors": (20, 50)}
    low, high = first["ancestor_range"]
    assert 0 <= low and high < 100 and high >= 50  # indices into the global cloud of 100
    # across_ranks=False: each rank its own, independent filter
    (shape, evidence), (_, other) = (rank["local_filter"] for rank in two_ranks)
    assert shape == (101, 1) and evidence != other


def test_ranks_filtering_different_observations_are_refused(two_ranks):
    for rank in two_ranks:
        assert "every rank must filter the same observations" in rank["unequal_ys"]
        assert "(20, 1) on rank 0, (19, 1) on rank 1" in rank["unequal_ys"]


def test_particle_counts_not_divisible_by_the_world_are_refused(two_ranks):
    for errors in (rank["errors"] for rank in two_ranks):
        assert len(errors) == 3
        assert all("num_particles must be divisible by the number of processes (2)" in e
                   and "101" in e for e in errors)


def test_two_rank_paris_matches_rts(two_ranks, exact):
    first, second = two_ranks
    assert torch.equal(first["paris"], second["paris"])
    runs = first["paris"]
    stderr = runs.std(0) / math.sqrt(len(runs))
    # PaRIS is biased by O(1/N); at N = 1000 that is far below 5 standard errors
    assert ((runs.mean(0) - exact["sum"]).abs() < 5 * stderr).all(), (runs.mean(0), exact)


@pytest.mark.parametrize("estimator", ["paris", "ppg"])
def test_two_rank_score_matches_autograd_of_the_kalman_likelihood(two_ranks, exact,
                                                                  estimator):
    first, second = two_ranks
    draws = first[f"score_{estimator}"]
    torch.testing.assert_close(draws, second[f"score_{estimator}"])  # global, alike
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact["score"]).abs() < 5 * stderr + 1e-4).all()


def test_two_rank_score_ascent_updates_alike(two_ranks):
    first, second = two_ranks
    assert first["objectives"] == second["objectives"]
    assert all(math.isfinite(v) for v in first["objectives"])
    torch.testing.assert_close(first["parameters"], second["parameters"], rtol=0, atol=0)
    assert first["validate"] == second["validate"]
    # through the shared loop (data_parallel = False: every rank sees the series)
    assert first["fit_objective"] == second["fit_objective"]
    torch.testing.assert_close(first["fit_parameters"], second["fit_parameters"], rtol=0,
                               atol=0)
    assert len(first["fit_objective"]) == 2
