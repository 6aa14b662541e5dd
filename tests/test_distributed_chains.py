"""Chains across the ranks of a process group (issue 14, part 3).

Every rank runs its own chains from its own random stream, and the samplers'
``to_inference_data`` gathers them into one ``InferenceData`` whose chain dimension
spans all ranks, rank 0's chains first. Two gloo processes on the CPU, spawned by
``distributed.run_local``; each spawned job costs a few seconds of start-up, so one job
runs every sampler. Every rank is seeded alike (``pyro.set_rng_seed(SEED)``), as the
same script under ``torchrun`` would be: the chains must differ anyway, and rank 0's
must be those of a one-process run with the same seed.
"""

import pickle
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import HMC, MCMC

from posterity.infer import distributed, to_inference_data
from posterity.infer.inference_data import gather_chains
from posterity.infer.sgmcmc import SGLD
from posterity.infer.smc import PPG, ParticleGibbs
from posterity.models import BayesianLogisticRegression, StochasticVolatility

SEED = 3
CHAINS, SAMPLES, WARMUP = 2, 40, 10


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The regression data and the state-space observations, the same on every rank."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(80, 3, generator=generator)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -0.5, 0.2])), generator=generator)
    torch.manual_seed(1)
    ys = StochasticVolatility().simulate(T=12).observations
    return X, y, ys


def sgld_run(kernel: SGLD | None = None) -> MCMC:
    X, y, _ = data()
    pyro.set_rng_seed(SEED)
    if kernel is None:
        kernel = SGLD(BayesianLogisticRegression(3, subsample_size=20), step_size=2e-3)
    with warnings.catch_warnings():  # Pyro's note that the chains run one after another
        warnings.filterwarnings("ignore", message="num_chains=.*available_cpu")
        mcmc = MCMC(kernel, num_samples=SAMPLES, warmup_steps=WARMUP, num_chains=CHAINS,
                    disable_progbar=True)
        mcmc.run(X, y)
    return mcmc


def particle_gibbs_run():
    _, _, ys = data()
    pyro.set_rng_seed(SEED)
    return ParticleGibbs(StochasticVolatility(), 20, progress=False).run(ys, num_iters=6,
                                                                        burn_in=1)


def ppg_run():
    _, _, ys = data()
    pyro.set_rng_seed(SEED)
    return PPG(StochasticVolatility(), lambda xp, x, y, t: x, 20, num_iters=6, burn_in=1,
               parallel="chains", progress=False).run(ys)


def hmc_inference_data(seed: int) -> az.InferenceData:
    """A kernel of Pyro's own: converted by ArviZ, gathered by posterity."""
    def model():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    pyro.set_rng_seed(seed)
    mcmc = MCMC(HMC(model, step_size=0.5, num_steps=3, adapt_step_size=False),
                num_samples=10, warmup_steps=2, disable_progbar=True)
    mcmc.run()
    return to_inference_data(mcmc)


def groups(idata: az.InferenceData) -> dict[str, dict[str, np.ndarray]]:
    return {g: {k: v.values for k, v in idata[g].data_vars.items()} for g in idata.groups()}


def every_sampler_on_each_rank() -> dict:
    """One rank's view of every sampler, as plain arrays."""
    mcmc = sgld_run()
    idata = to_inference_data(mcmc)
    out = {"rank": distributed.rank(), "sgld": groups(idata),
           "sgld_chain": idata.posterior.chain.values,
           "sgld_local": mcmc.get_samples(group_by_chain=True)["weight"].numpy(),
           "sgld_rhat": az.rhat(idata)["weight"].values,
           "kernel": pickle.dumps(mcmc.kernel)}
    pg = particle_gibbs_run()
    out["pg"] = groups(pg.to_inference_data())
    out["pg_local"] = pg.paths.numpy()
    ppg = ppg_run()
    out["ppg"] = groups(ppg.to_inference_data())
    out["ppg_estimate"] = ppg.estimate.numpy()
    out["ppg_local"] = ppg.estimates.numpy()
    out["hmc"] = groups(hmc_inference_data(distributed.rank_seed(SEED)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hmc_inference_data(SEED)  # every rank seeded alike: the chains repeat
    out["hmc_warnings"] = [str(w.message) for w in caught]
    try:  # rank 1 draws one sample fewer: a clear error on every rank, not a hang
        gather_chains({"x": np.zeros((1, 5 - distributed.rank()))})
    except ValueError as error:
        out["mismatch"] = str(error)
    return out


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return distributed.run_local(every_sampler_on_each_rank, 2, timeout=120)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for group in a:
        assert a[group].keys() == b[group].keys()
        for name in a[group]:
            np.testing.assert_array_equal(a[group][name], b[group][name], err_msg=name)


def assert_chains_differ(draws: np.ndarray) -> None:
    """Every pair of chains of ``[chain, draw, ...]`` differs."""
    flat = draws.reshape(draws.shape[0], -1)
    for i in range(len(flat)):
        for j in range(i):
            assert np.abs(flat[i] - flat[j]).max() > 1e-6, (i, j)


def test_two_ranks_of_two_sgld_chains_give_one_inference_data_of_four_chains(ranks):
    zero, one = ranks
    assert_same(zero["sgld"], one["sgld"])  # the same InferenceData on every rank
    np.testing.assert_array_equal(zero["sgld_chain"], np.arange(4))
    posterior = zero["sgld"]["posterior"]
    assert posterior["weight"].shape == (4, SAMPLES, 3)
    assert_chains_differ(posterior["weight"])
    for group in ("sample_stats", "log_likelihood", "posterior_predictive"):
        assert all(v.shape[0] == 4 for v in zero["sgld"][group].values()), group
    assert zero["sgld"]["log_likelihood"]["obs"].shape == (4, SAMPLES, 80)
    assert zero["sgld"]["observed_data"]["obs"].shape == (80,)
    # rank order: rank 0's chains first; get_samples() stays local
    np.testing.assert_array_equal(posterior["weight"][:2], zero["sgld_local"])
    np.testing.assert_array_equal(posterior["weight"][2:], one["sgld_local"])
    assert np.isfinite(zero["sgld_rhat"]).all() and zero["sgld_rhat"].shape == (3,)


def test_rank_zero_runs_what_one_process_runs(ranks):
    local = sgld_run().get_samples(group_by_chain=True)["weight"].numpy()
    np.testing.assert_array_equal(ranks[0]["sgld_local"], local)
    np.testing.assert_array_equal(ranks[0]["pg_local"], particle_gibbs_run().paths.numpy())
    np.testing.assert_array_equal(ranks[0]["ppg_local"], ppg_run().estimates.numpy())


def test_a_chain_worker_outside_the_group_runs_the_chains_of_the_rank_that_sent_it(ranks):
    """Pyro's chain worker processes get the kernel pickled and are in no group."""
    for rank in ranks:
        kernel = pickle.loads(rank["kernel"])
        local = sgld_run(kernel).get_samples(group_by_chain=True)["weight"].numpy()
        np.testing.assert_array_equal(local, rank["sgld_local"])


def test_particle_gibbs_chains_from_two_ranks(ranks):
    zero, one = ranks
    assert_same(zero["pg"], one["pg"])
    x = zero["pg"]["posterior"]["x"]
    assert x.shape == (2, 5, 12, 1)  # 1 chain per rank, 6 iterations less 1 of burn-in
    assert_chains_differ(x)
    np.testing.assert_array_equal(x[1], one["pg_local"][0, 1:])


def test_ppg_chains_from_two_ranks_and_their_averaged_estimate(ranks):
    zero, one = ranks
    assert_same(zero["ppg"], one["ppg"])
    estimate = zero["ppg"]["posterior"]["estimate"]
    assert estimate.shape == (2, 5, 1)
    assert_chains_differ(estimate)
    np.testing.assert_allclose(zero["ppg_estimate"], one["ppg_estimate"])
    both = np.stack([r["ppg_local"][1:].mean(0) for r in ranks]).mean(0)
    np.testing.assert_allclose(zero["ppg_estimate"], both, rtol=1e-6)


def test_ranks_that_disagree_on_a_shape_get_an_error_naming_it(ranks):
    for r in ranks:
        assert "x has shape ['chains', 4] on rank 1 but ['chains', 5] on rank 0" \
            in r["mismatch"]


def test_chains_of_another_kernel_are_gathered_and_repeats_are_flagged(ranks):
    zero, one = ranks
    assert_same(zero["hmc"], one["hmc"])
    assert zero["hmc"]["posterior"]["mu"].shape == (2, 10)
    assert_chains_differ(zero["hmc"]["posterior"]["mu"])
    for r in ranks:
        assert any("chains 0 and 1 of the gathered posterior are identical" in m
                   and "rank_seed" in m for m in r["hmc_warnings"])
