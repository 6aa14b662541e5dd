"""PPG with its sweeps spread over the ranks (``parallel="particles"``).

Conditional global resampling is checked on a simulated world of three ranks (one
process). PPG and PPG score ascent run on two gloo processes spawned by the test (one
job for all the two-rank checks): their estimates are held to the exact RTS smoother /
Kalman score of a linear-Gaussian model within their Monte Carlo error (the spread of
independent chains), the ranks must agree on every reference path and estimate, and the
frozen particle must keep its slot through resampling.
"""

import math

import pyro
import pytest
import torch

from posterity.infer import distributed
from posterity.infer.smc import PPG, ScoreAscent
from posterity.infer.smc import across_ranks as ranks
from posterity.infer.smc.backward import backward_sampler
from posterity.infer.smc.paris import paris_update
from posterity.infer.smc.ppg import conditional_steps_across_ranks, path_across_ranks
from posterity.models import LinearGaussianSSM

# --- conditional global resampling on a simulated world (one process) -----------------------

WORLD, SHARE = 3, 4  # three ranks of four particles; the reference is global slot 11
WEIGHTS = torch.tensor([[0.20, 0.05, 0.25, 0.05], [0.02, 0.08, 0.0, 0.05],
                        [0.10, 0.07, 0.03, 0.10]], dtype=torch.float64)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def test_conditional_offspring_of_a_simulated_world_are_n_minus_one_global_draws():
    """The ``N - 1`` free offspring are multinomial over the global weights, and the
    exchange plan leaves every rank ``n`` rows once the last rank adds the reference."""
    num = WEIGHTS.numel()
    summaries = torch.stack([ranks.summarize(w, num) for w in WEIGHTS])
    shares = ranks.conditional_shares(SHARE, WORLD)
    assert shares.tolist() == [4, 4, 3]
    torch.manual_seed(0)
    draws = []
    for seed in range(400):
        counts, shared = ranks.offspring_counts("multinomial", summaries, num - 1,
                                                torch.Generator().manual_seed(seed))
        offspring = [ranks.local_offspring("multinomial", WEIGHTS[r], summaries, r, num - 1,
                                           shared) for r in range(WORLD)]
        assert [len(o) for o in offspring] == counts.tolist() and int(counts.sum()) == num - 1
        send, receive, _ = ranks.transfer_plan(counts, shares)
        assert (counts - send + receive).tolist() == [4, 4, 3]
        draws.append(torch.cat([torch.bincount(o, minlength=SHARE) for o in offspring]))
    draws = torch.stack(draws).double()
    expected = (num - 1) * WEIGHTS.flatten()
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - expected).abs() <= 4 * stderr + 1e-9).all(), draws.mean(0)
    assert (draws[:, WEIGHTS.flatten() == 0] == 0).all()


def test_conditional_resampling_keeps_the_reference_in_its_slot():
    """In one process: the last particle is its own ancestor, and every particle has
    ``(N - 1) W_i`` offspring on average besides (``+1`` for the reference)."""
    num = WEIGHTS.numel()
    particles = torch.arange(num, dtype=torch.float64).unsqueeze(-1)
    log_weights = WEIGHTS.flatten().log()
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    counts = []
    for _ in range(400):
        new, ancestors = ranks.conditional_resample(particles, log_weights, generator)
        assert new.shape == (num, 1) and ancestors[-1] == num - 1 and new[-1, 0] == num - 1
        assert torch.equal(new[:, 0].long(), ancestors)
        counts.append(torch.bincount(ancestors, minlength=num))
    counts = torch.stack(counts).double()
    expected = (num - 1) * WEIGHTS.flatten() + torch.nn.functional.one_hot(
        torch.tensor(num - 1), num)
    stderr = counts.std(0) / math.sqrt(len(counts))
    assert ((counts.mean(0) - expected).abs() <= 4 * stderr + 1e-9).all()


# --- two ranks -----------------------------------------------------------------------------

T, N = 10, 100


def lgssm() -> LinearGaussianSSM:
    return LinearGaussianSSM(1, 1, A=0.9, Q=0.5, C=1.0, R=1.0)


def series(ssm: LinearGaussianSSM) -> torch.Tensor:
    pyro.set_rng_seed(0)  # the same series on both ranks
    with torch.no_grad():
        return ssm.simulate(T).observations


def sum_of_states(x_prev, x, y, t):
    return x


CHAINS, ITERS, BURN_IN = 6, 10, 2


def one_sweep_inside(ssm, ys, reference, generator) -> dict:
    """A PPG sweep from its parts (what ``PPG.sweep`` composes), with what the checks
    need: the frozen slot at every step, and the global clouds and backward indices."""
    me, last = distributed.rank(), distributed.world_size() - 1
    kernel = backward_sampler(ssm, "exact")
    statistics, particles, indices, frozen = None, [], [], []
    clouds, backward_tables = [], []
    for step in conditional_steps_across_ranks(ssm, ys, reference, N, generator):
        statistics, backward = paris_update(step, statistics, sum_of_states, kernel, 2,
                                            across_ranks=True)
        particles.append(step.particles)
        indices.append(backward)
        clouds.append(distributed.all_gather(step.particles))
        backward_tables.append(None if backward is None else distributed.all_gather(backward))
        if me == last:
            frozen.append(bool(torch.equal(step.particles[-1], reference[step.t]))
                          and (step.ancestors is None or int(step.ancestors[-1]) == N - 1))
    path = path_across_ranks(particles, indices, step.log_weights.exp(), generator)
    return {"path": path, "frozen": frozen, "clouds": clouds, "tables": backward_tables}


def two_rank_job() -> dict:
    """Everything the two-rank tests check, run once on each rank."""
    out: dict = {}
    ssm = lgssm()
    ys = series(ssm)
    pyro.set_rng_seed(distributed.rank_seed(1))
    with torch.no_grad():
        runs = [PPG(ssm, sum_of_states, N, num_iters=ITERS, burn_in=BURN_IN, progress=False)
                .run(ys) for _ in range(CHAINS)]
        out["estimates"] = torch.stack([r.estimate for r in runs])
        out["per_iteration"] = torch.stack([r.estimates for r in runs])
        idata = runs[0].to_inference_data()
        out["idata_chains"] = int(idata.posterior.sizes["chain"])
        out["idata_estimate"] = idata.posterior["estimate"].values
        engine = PPG(ssm, sum_of_states, N, progress=False)
        generator = ranks.shared_generator()
        path, paths = runs[0].path, []
        for _ in range(3):
            path = engine.sweep(ys, path, generator)[1]
            paths.append(path)
        out["paths"] = torch.stack(paths)
        out["inside"] = one_sweep_inside(ssm, ys, path, generator)
        chains = PPG(ssm, sum_of_states, 20, num_iters=3, burn_in=1, progress=False,
                     parallel="chains").run(ys)
        out["chains_local"] = chains.estimates
        out["chains_idata"] = int(chains.to_inference_data().posterior.sizes["chain"])
        out["law"] = resampling_counts()
    errors = []
    for make in (lambda: PPG(ssm, sum_of_states, 101),
                 lambda: ScoreAscent(ssm, "ppg", 101, progress=False)):
        try:
            make()
        except ValueError as error:
            errors.append(str(error))
    out["errors"] = errors
    out["chains_allowed"] = PPG(ssm, sum_of_states, 101, parallel="chains").num_particles
    scores = []
    for _ in range(8):
        learner = ScoreAscent(ssm, "ppg", num_particles=200, progress=False,
                              parallel="particles")
        with torch.no_grad():  # a path move past the first path (an unconditional sweep)
            learner.objective(ys)
        scores.append(torch.cat([g.flatten() for g in learner.score(ys).values()]))
        out.setdefault("score_references", []).append(learner.reference)
    out["scores"] = torch.stack(scores)
    chains = ScoreAscent(ssm, "ppg", num_particles=20, progress=False, parallel="chains")
    out["chains_score"] = torch.cat([g.flatten() for g in chains.score(ys).values()])
    out["chains_reference"] = chains.reference
    return out


def resampling_counts() -> torch.Tensor:
    """Global offspring counts of 300 conditional resamplings of fixed weights spread
    over the ranks (four particles each), the reference's slot checked each time."""
    n, me = 4, distributed.rank()
    weights = torch.tensor([0.30, 0.05, 0.20, 0.05, 0.02, 0.08, 0.0, 0.30])
    local = weights[me * n:(me + 1) * n]
    totals = weights.double().reshape(2, n).sum(1)
    particles = torch.arange(me * n, (me + 1) * n, dtype=torch.float32).unsqueeze(-1)
    generator = ranks.shared_generator()
    drawn = []
    for _ in range(300):
        new, ancestors = ranks.conditional_resample(particles, local.log(), generator, totals)
        assert new.shape == (n, 1) and torch.equal(new[:, 0].long(), ancestors)
        if me == distributed.world_size() - 1:
            assert int(ancestors[-1]) == 2 * n - 1
        drawn.append(ancestors)
    every = distributed.all_gather(torch.stack(drawn), dim=1)  # [300, 2 n], global
    return torch.stack([torch.bincount(row, minlength=2 * n) for row in every])


@pytest.fixture(scope="module")
def two_ranks():
    return distributed.run_local(two_rank_job, 2, timeout=240)


@pytest.fixture(scope="module")
def exact():
    ssm = lgssm()
    ys = series(ssm)
    params = dict(ssm.named_parameters())
    score = torch.autograd.grad(ssm.kalman_filter(ys)["log_likelihood"], list(params.values()))
    with torch.no_grad():
        smoothed_sum = ssm.rts_smoother(ys)["mean"].sum(0)
    return {"score": torch.cat([g.flatten() for g in score]), "sum": smoothed_sum}


def test_two_rank_ppg_matches_rts(two_ranks, exact):
    """Independent chains of the particle-parallel sampler: the mean of their
    estimates is the RTS smoothed sum within 5 standard errors (at stationarity a PPG
    sweep's estimate is unbiased; two burn-in sweeps bring the chain there)."""
    first, second = two_ranks
    assert torch.equal(first["estimates"], second["estimates"])  # one chain, global
    assert torch.equal(first["per_iteration"], second["per_iteration"])
    runs = first["estimates"]
    stderr = runs.std(0) / math.sqrt(len(runs))
    assert ((runs.mean(0) - exact["sum"]).abs() < 5 * stderr).all(), (runs, exact["sum"])


def test_two_rank_ppg_gives_one_chain(two_ranks):
    first, second = two_ranks
    assert first["idata_chains"] == second["idata_chains"] == 1
    assert (first["idata_estimate"] == second["idata_estimate"]).all()
    torch.testing.assert_close(torch.as_tensor(first["idata_estimate"][0]),
                               first["per_iteration"][0, BURN_IN:])
    # parallel="chains": each rank its own chain, gathered into two
    assert not torch.equal(first["chains_local"], second["chains_local"])
    assert first["chains_idata"] == 2


def test_ranks_agree_on_every_reference_path(two_ranks):
    first, second = two_ranks
    assert first["paths"].shape == (3, T, 1)
    assert torch.equal(first["paths"], second["paths"])
    assert not torch.equal(first["paths"][0], first["paths"][2])  # the path moves
    assert torch.equal(first["inside"]["path"], second["inside"]["path"])
    assert all(torch.equal(a, b) for a, b in zip(first["score_references"],
                                                second["score_references"]))


def test_the_frozen_particle_keeps_its_slot_and_the_path_is_a_trajectory(two_ranks):
    """On the last rank the reference is the last particle at every step and its own
    ancestor; the next path is a particle of every step's global cloud, each linked to
    the next one by one of its backward indices."""
    first, second = two_ranks
    assert first["inside"]["frozen"] == [] and second["inside"]["frozen"] == [True] * T
    inside = first["inside"]
    path, clouds, tables = inside["path"], inside["clouds"], inside["tables"]
    slots = []
    for t in range(T):
        matches = torch.nonzero((clouds[t] == path[t]).all(-1)).flatten()
        assert len(matches) >= 1, t
        slots.append(matches.tolist())
    for t in range(1, T):
        assert any(int(previous) in slots[t - 1]
                   for j in slots[t] for previous in tables[t][j]), t


def test_two_rank_conditional_resampling_law(two_ranks):
    """Over 300 resamplings across two ranks: the reference (global 7) is always its own
    ancestor, and the others are 7 global draws: mean counts ``7 W_i (+1 for 7)``."""
    counts = two_ranks[0]["law"].double()
    assert torch.equal(two_ranks[0]["law"], two_ranks[1]["law"])
    assert (counts.sum(1) == 8).all() and (counts[:, 7] >= 1).all()
    weights = torch.tensor([0.30, 0.05, 0.20, 0.05, 0.02, 0.08, 0.0, 0.30],
                           dtype=torch.float64)
    expected = 7 * weights
    expected[7] += 1
    stderr = counts.std(0) / math.sqrt(len(counts))
    assert ((counts.mean(0) - expected).abs() <= 4 * stderr + 1e-9).all(), counts.mean(0)


def test_particle_counts_not_divisible_by_the_world_are_refused(two_ranks):
    for rank in two_ranks:
        assert len(rank["errors"]) == 2
        assert all("num_particles must be divisible by the number of processes (2)" in e
                   and "101" in e for e in rank["errors"])
        assert rank["chains_allowed"] == 101  # chains: every rank holds all of them


def test_two_rank_ppg_score_matches_autograd_of_the_kalman_likelihood(two_ranks, exact):
    first, second = two_ranks
    draws = first["scores"]
    torch.testing.assert_close(draws, second["scores"], rtol=0, atol=0)  # global, alike
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact["score"]).abs() < 5 * stderr + 1e-4).all(), \
        (draws.mean(0), exact["score"], stderr)


def test_ppg_score_ascent_with_chains_averages_the_ranks_chains(two_ranks):
    first, second = two_ranks
    torch.testing.assert_close(first["chains_score"], second["chains_score"])  # the mean
    assert torch.isfinite(first["chains_score"]).all()
    assert not torch.equal(first["chains_reference"], second["chains_reference"])


def test_parallel_is_checked():
    with pytest.raises(ValueError, match="parallel must be one of"):
        PPG(lgssm(), sum_of_states, 10, parallel="ranks")
    with pytest.raises(ValueError, match="parallel='chains' runs one PPG chain"):
        ScoreAscent(lgssm(), "paris", 10, parallel="chains")
