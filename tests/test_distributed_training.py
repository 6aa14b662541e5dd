"""Data-parallel training through the shared loop (two gloo processes on CPU).

An update on two ranks must equal the single-process update on the same global
minibatch and the same draws. Each rank records every random draw its engine makes
(the noise of reparameterized sites, the values of discrete ones, the β of multi-rate
VI); one process then trains on the same global minibatches with the ranks' draws
concatenated along the data dimension, and the gradients that reach the optimizer must
agree to float64 round-off. The global minibatch of 7 rows splits 4 + 3, so a mean of
the ranks' gradients instead of the row-weighted sum is caught.
"""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from pathlib import Path

import pyro
import pytest
import torch
from pyro.poutine.messenger import Messenger

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, WakeSleep, distributed, train
from posterity.infer.amortized import vi as vi_module
from posterity.infer.wake_sleep import helmholtz_machine
from posterity.models import VAE

WIDTH = 6
ROWS, BATCH = 12, 7  # two updates: 7 rows (4 + 3 per rank), then 5 (3 + 2)
VI_CASES = [("vi", "elbo"), ("vi", "iwae"), ("vi", "multi_rate")]
# the natural algorithms also check that the Fisher blocks are reduced over the ranks
WS_CASES = [("ws", "ws"), ("ws", "rws"), ("ws", "bihm"), ("ws", "nrws"), ("ws", "nbihm")]


class Draws(Messenger):
    """Makes every fresh draw of a Pyro program itself: recorded as ``(data dim, noise
    or value)`` events, or, given ``replay``, taken from those events in order.
    Normal sites get ``loc + scale * noise`` (reparameterized, so gradients flow);
    other sites the value itself."""

    def __init__(self, replay: list[torch.Tensor] | None = None):
        super().__init__()
        self.events: list[tuple[int, torch.Tensor]] = []
        self.replay = None if replay is None else list(replay)

    def _draw(self, dim: int, make) -> torch.Tensor:
        value = make() if self.replay is None else self.replay.pop(0)
        self.events.append((dim, value.detach().clone()))
        return value

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["done"]:
            return
        fn = base = msg["fn"]
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
        dims = [f.dim - len(fn.event_shape) for f in msg["cond_indep_stack"]
                if f.name == "data"]
        if not dims:  # a plate's own subsample site
            return
        (dim,) = dims
        if isinstance(base, torch.distributions.Normal):
            noise = self._draw(dim, lambda: torch.randn(fn.shape(), dtype=base.loc.dtype))
            msg["value"] = base.loc + base.scale * noise
        else:
            msg["value"] = self._draw(dim, fn.sample)
        msg["done"] = True

    def sample_betas(self, low, high, shape, like, stratified=False,
                     distribution="log_uniform"):  # AmortizedVI's β
        assert not stratified  # beta_sampling="example"
        u = self._draw(0, lambda: torch.rand(shape, dtype=like.dtype))
        return vi_module.beta_at(u, low, high, distribution)


def make_engine(family: str, kind: str):
    torch.manual_seed(0)  # the same initial weights wherever it is built
    if family == "vi":
        multi = kind == "multi_rate"
        return AmortizedVI(VAE(WIDTH, 2, (5,), multi_rate=multi),
                           GaussianEncoder(WIDTH, 2, (5,), multi_rate=multi),
                           objective=kind, num_particles=3, optimizer="sgd", lr=0.1,
                           **({"beta_sampling": "example"} if multi else {}))
    model, guide = helmholtz_machine((WIDTH, 4, 3))
    return WakeSleep(model, guide, algorithm=kind, num_particles=3, optimizer="sgd", lr=0.1)


def binary_data(rows: int = ROWS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.bernoulli(torch.full((rows, WIDTH), 0.4, dtype=torch.float64),
                           generator=generator)


def train_with_draws(family: str, kind: str, replay=None, local: list | None = None):
    """Two updates of ``fit`` with every draw made by :class:`Draws`; returns the
    gradients that reached the optimizer at each update and the draws."""
    engine = make_engine(family, kind)
    data = engine.prepare(binary_data())  # outside Draws: the probe draws are not recorded
    params = [p for group in engine.optimizer.param_groups for p in group["params"]]
    seen: list[list[torch.Tensor]] = []
    engine.optimizer.register_step_pre_hook(
        lambda *_: seen.append([p.grad.detach().clone() for p in params]))
    draws = Draws(replay)
    uniform, vi_module.sample_betas = vi_module.sample_betas, draws.sample_betas
    reduce = distributed.reduce_gradients
    if local is not None:  # also keep each rank's gradient before the all-reduce
        @contextlib.contextmanager
        def recording(parameters, weight=None, **options):
            parameters = list(parameters)
            with reduce(parameters, weight, **options):
                yield  # backward; the reduced sums are written back on leaving
                local.append([p.grad.detach().clone() for p in parameters])
        distributed.reduce_gradients = recording
    try:
        with draws:
            train.fit(engine, data, epochs=1, batch_size=BATCH, seed=5, progress=False)
    finally:
        vi_module.sample_betas, distributed.reduce_gradients = uniform, reduce
    return seen, draws.events


def gradient_job(cases):
    """Per rank: each case's reduced gradients, local gradients and draws."""
    torch.set_default_dtype(torch.float64)
    out = {}
    try:
        for case in cases:
            local: list = []
            seen, events = train_with_draws(*case, local=local)
            out[case] = {"reduced": seen, "local": local, "events": events}
    finally:
        torch.set_default_dtype(torch.float32)
    return out


def job(cases, folder: str):
    """All the checks of one pair of processes (each pair costs seconds to start)."""
    return {"gradients": gradient_job(cases), "fit": fit_job(folder)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed_fit")
    return distributed.run_local(job, 2, (VI_CASES + WS_CASES, str(folder)), timeout=240)


def concatenated(ranks: list[dict]) -> list[torch.Tensor]:
    """The ranks' draws, event by event, joined along the data dimension."""
    events = [r["events"] for r in ranks]
    assert len({len(e) for e in events}) == 1
    return [torch.cat([e[i][1] for e in events], dim=events[0][i][0])
            for i in range(len(events[0]))]


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", VI_CASES + WS_CASES, ids=lambda c: c[1])
def test_two_ranks_update_like_one_process_on_the_global_batch(two_ranks, case):
    ranks = [r["gradients"][case] for r in two_ranks]
    # every rank took its contiguous share: 4 + 3 rows, then 3 + 2
    dim, first = ranks[0]["events"][0]
    assert first.shape[dim] == 4 and ranks[1]["events"][0][1].shape[dim] == 3
    torch.set_default_dtype(torch.float64)
    try:
        single, _ = train_with_draws(*case, replay=concatenated(ranks))
    finally:
        torch.set_default_dtype(torch.float32)
    assert len(single) == len(ranks[0]["reduced"]) == 2
    for update, (expected, sizes) in enumerate(zip(single, [(4, 3), (3, 2)])):
        for rank in ranks:  # both ranks hold the reduced gradient
            for got, want in zip(rank["reduced"][update], expected):
                assert_close(got, want)
        if case[1] in ("nrws", "nbihm"):  # the optimizer sees preconditioned gradients
            continue
        # the test has power: the plain mean of the ranks' gradients is far off
        weights = [n / sum(sizes) for n in sizes]
        mean = [(a + b) / 2 for a, b in zip(ranks[0]["local"][update], ranks[1]["local"][update])]
        weighted = [weights[0] * a + weights[1] * b
                    for a, b in zip(ranks[0]["local"][update], ranks[1]["local"][update])]
        for w, want in zip(weighted, expected):
            assert_close(w, want)
        gap = torch.cat([(m - e).reshape(-1) for m, e in zip(mean, expected)]).abs().max()
        assert gap > 1e-4


# --- the loop under a process group: checkpoints, resume, signals, agreement -----------
def signal_on_rank_1(vi: AmortizedVI, update: int) -> None:
    """Rank 1 alone receives SIGTERM during update ``update``."""
    step = vi.step

    def stepping(x):
        if vi.num_steps + 1 == update and distributed.rank() == 1:
            signal.raise_signal(signal.SIGTERM)
        return step(x)

    vi.step = stepping


class WholeBatch:
    """An engine whose loss on each rank is that rank's part of one global estimate:
    it gets the whole minibatch and weight 1, so the summed gradient is the global one."""

    data_parallel = False
    monitor = ("valid_loss", "min")

    def __init__(self):
        self.mu = torch.zeros(1, requires_grad=True)
        self.optimizer, _ = train.make_optimizer([self.mu], "sgd", lr=0.3)
        self.sizes: list[int] = []

    def step(self, batch):
        self.sizes.append(len(batch))
        mine = batch[distributed.share(len(batch))]
        loss = (mine - self.mu).pow(2).sum() / len(batch)
        train.optimizer_step(self.optimizer, loss)
        return {"loss": float(distributed.all_reduce_sum(loss.detach()))}

    def validate(self, data):
        return {"valid_loss": float((data - self.mu).pow(2).mean())}

    def state_dict(self):
        return {"mu": self.mu.detach().clone()}

    def load_state_dict(self, state):
        self.mu.data.copy_(state["mu"])


def make_vi(seed: int = 0) -> AmortizedVI:
    torch.manual_seed(seed)
    return AmortizedVI(VAE(16, 3, (8,)), GaussianEncoder(16, 3, (8,)), objective="iwae",
               num_particles=3, lr=1e-2)


def fit_data() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((40, 16), 0.3), generator=generator)


def snapshot(engine) -> dict:
    return {"params": [p.detach().clone() for p in engine.parameters()],
            "steps": engine.history.steps, "epochs": engine.history.epochs}


def fit_job(folder: str):
    folder, data = Path(folder), fit_data()
    kwargs = dict(batch_size=10, valid=data[:10], patience=5, seed=3, progress=False)
    out = {"folder": str(folder)}
    # different initial weights per rank: fit starts every rank from rank 0's
    straight = make_vi(seed=distributed.rank())
    straight.fit(data, epochs=3, checkpoint=folder / "straight" / "run.pt", **kwargs)
    out["straight"] = snapshot(straight)
    out["files"] = sorted(os.listdir(folder / "straight"))

    stopped = make_vi(seed=10 * distributed.rank())  # rank 0's weights as straight's
    signal_on_rank_1(stopped, 6)
    try:
        stopped.fit(data, epochs=3, checkpoint=folder / "signal" / "run.pt", **kwargs)
        out["interrupted"] = None
    except train.Interrupted as stop:
        out["interrupted"] = (stop.epoch, stop.step, stop.signal)
    resumed = make_vi(seed=20 + distributed.rank())
    resumed.fit(data, epochs=3, checkpoint=folder / "signal" / "run.pt", **kwargs)
    out["after_signal"] = snapshot(resumed)

    first = make_vi(seed=30 * distributed.rank())
    first.fit(data, epochs=1, checkpoint=folder / "epoch" / "run.pt", **kwargs)
    pyro.set_rng_seed(999)  # whatever happens between the runs must not matter
    again = make_vi(seed=40 + distributed.rank())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.fit(data, epochs=3, checkpoint=folder / "epoch" / "run.pt", **kwargs)
    out["after_epoch"] = snapshot(again)
    out["warnings"] = [str(w.message) for w in caught]

    try:
        make_vi().fit(data, epochs=1, batch_size=1, progress=False)
        out["small_batch"] = None
    except ValueError as error:
        out["small_batch"] = str(error)

    try:  # a checkpoint on rank 0 only would leave the ranks in different collectives
        make_vi().fit(data, epochs=1, batch_size=10, progress=False,
                      checkpoint=folder / "alone.pt" if distributed.is_main() else None)
        out["unlike_calls"] = None
    except ValueError as error:
        out["unlike_calls"] = str(error)

    try:  # the DDP habit: every rank passes its own shard of the data
        half = data.shape[0] // 2
        shard = data[:half] if distributed.is_main() else data[half: 2 * half]
        make_vi().fit(shard, epochs=1, batch_size=10, progress=False)
        out["shards"] = None
    except ValueError as error:
        out["shards"] = str(error)

    budget = make_vi()  # out of time after its first update, on both ranks
    history = budget.fit(data, epochs=3, batch_size=10, progress=False, time_budget=1e-9)
    out["budget"] = (len(history.steps["loss"]), history.out_of_time, history.num_epochs)

    whole = WholeBatch()
    train.fit(whole, data[:, :1], epochs=2, batch_size=10, seed=0, progress=False)
    out["whole"] = (whole.sizes, whole.mu.detach().clone())

    multi = make_engine("vi", "multi_rate")
    multi.beta_sampling = "stratified"
    share = data[:7][distributed.share(7)]  # 4 + 3 rows of a global minibatch of 7
    out["stratified_betas"] = distributed.all_gather(multi.draw_beta(share)).tolist()
    out["beta_range"] = multi.training_beta_range  # the range β is drawn from
    out["beta_distribution"] = multi.beta_distribution
    return out


@pytest.fixture(scope="module")
def fitted(two_ranks):
    return [r["fit"] for r in two_ranks]


def test_one_checkpoint_and_the_same_history_on_every_rank(fitted):
    rank0, rank1 = fitted
    assert rank0["files"] == ["run.pt"]  # rank 0 wrote, alone; the lock went with the run
    for run in ("straight", "after_signal", "after_epoch"):
        assert rank0[run]["steps"] == rank1[run]["steps"]
        assert rank0[run]["epochs"] == rank1[run]["epochs"]
        for a, b in zip(rank0[run]["params"], rank1[run]["params"]):
            assert torch.equal(a, b)
    assert len(rank0["straight"]["steps"]["loss"]) == 12
    assert len(rank0["straight"]["epochs"]["valid_iwae"]) == 3


def test_a_signal_on_one_rank_stops_every_rank_and_the_run_resumes_exactly(fitted):
    # received during update 6; the ranks agree on it while update 7 runs, and stop there
    for rank in fitted:
        assert rank["interrupted"] == (2, 7, "SIGTERM")
        for resumed in ("after_signal", "after_epoch"):
            for a, b in zip(rank["straight"]["params"], rank[resumed]["params"]):
                assert torch.equal(a, b)
            assert rank[resumed]["steps"] == rank["straight"]["steps"]
            without_time = {k: v for k, v in rank[resumed]["epochs"].items() if k != "seconds"}
            assert without_time == {k: v for k, v in rank["straight"]["epochs"].items()
                                    if k != "seconds"}


def test_a_spent_time_budget_stops_every_rank_one_update_later_than_one_process(fitted):
    alone = make_vi().fit(fit_data(), epochs=3, batch_size=10, progress=False,
                          time_budget=1e-9)
    assert (len(alone.steps["loss"]), alone.out_of_time, alone.num_epochs) == (1, True, 1)
    for rank in fitted:  # agreed while the second update runs
        assert rank["budget"] == (2, True, 1)


def test_only_rank_0_reports_a_change_of_settings_on_resume(fitted):
    rank0, rank1 = fitted
    assert any("epochs 3 (was 1)" in w for w in rank0["warnings"])
    assert not any("resuming" in w for w in rank1["warnings"])


def test_a_global_batch_smaller_than_the_world_is_refused_on_every_rank(fitted):
    for rank in fitted:
        assert "batch_size" in rank["small_batch"] and "got 1" in rank["small_batch"]


def test_ranks_called_with_different_settings_are_refused_on_every_rank(fitted):
    for rank in fitted:
        assert "checkpoint by rank: [True, False]" in rank["unlike_calls"]
        assert "data by rank" in rank["shards"] and "do not shard it" in rank["shards"]


def test_an_engine_that_is_not_data_parallel_gets_the_whole_batch_with_weight_one(fitted):
    single = WholeBatch()
    data = fit_data()[:, :1]
    train.fit(single, data, epochs=2, batch_size=10, seed=0, progress=False)
    for sizes, mu in (rank["whole"] for rank in fitted):
        assert sizes == [10] * 8
        torch.testing.assert_close(mu, single.mu.detach())


def test_a_two_rank_checkpoint_resumes_in_one_process(fitted):
    path = Path(fitted[0]["folder"]) / "straight" / "run.pt"
    data = fit_data()
    vi = make_vi(seed=50)
    with pytest.warns(UserWarning, match=r"world_size 1 \(was 2\)"):
        vi.fit(data, epochs=4, batch_size=10, valid=data[:10], patience=5, seed=3,
               progress=False, checkpoint=path)
    assert vi.history.num_epochs == 4
    assert vi.history.steps["loss"][:12] == fitted[0]["straight"]["steps"]["loss"]


def test_stratified_betas_cover_the_strata_of_the_global_minibatch(fitted):
    """``beta_sampling="stratified"`` on two ranks: one β in each of the 7 slices of equal
    probability of the global minibatch of 7 rows (not 4 + 3 slices per rank)."""
    import math
    low, high = fitted[0]["beta_range"]
    distribution = fitted[0]["beta_distribution"]  # log-uniform is Kumaraswamy(1, 1)
    a, b = (1.0, 1.0) if distribution == "log_uniform" else distribution
    for rank in fitted:
        t = [(math.log(beta) - math.log(low)) / (math.log(high) - math.log(low))
             for beta in rank["stratified_betas"]]
        probability = [1 - (1 - v**a) ** b for v in t]
        assert sorted(math.floor(p * 7) for p in probability) == list(range(7))
    assert fitted[0]["stratified_betas"] == fitted[1]["stratified_betas"]
