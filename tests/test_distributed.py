"""The process-group plumbing of ``posterity.infer.distributed``: one process is the
identity, a launch without torchrun's environment says how to launch, and
``run_local`` returns every rank's result, reports a failing rank and never hangs."""

from __future__ import annotations

import os
import time

import pytest
import torch

from posterity.infer import distributed


def test_outside_a_group_every_collective_is_the_identity():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert not distributed.is_initialized()
    assert torch.equal(distributed.all_reduce_sum(x), x)
    assert torch.equal(distributed.all_gather(x), x)
    assert torch.allclose(distributed.logsumexp(x, dim=1), torch.logsumexp(x, dim=1))
    assert distributed.all_gather_objects("a") == ["a"]
    assert distributed.share(5) == slice(0, 5)
    assert distributed.rank_seed(7) == 7 and distributed.rank_seed(None) is None


def test_shares_are_contiguous_and_differ_by_at_most_one_row():
    assert distributed.share_sizes(7, 2) == [4, 3]
    assert distributed.share_sizes(10, 4) == [3, 3, 2, 2]
    assert sum(distributed.share_sizes(1001, 8)) == 1001


def test_without_torchruns_environment_the_error_says_how_to_launch(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.DistributedError, match="torchrun --nproc-per-node"):
        distributed.init_process_group()


def collectives():
    r = distributed.rank()
    values = torch.tensor([0.0, 1.0]) + 10 * r
    return {
        "rank": r, "world": distributed.world_size(),
        "sum": distributed.all_reduce_sum(torch.tensor([float(r + 1)])).item(),
        "max": distributed.all_reduce_max(torch.tensor([float(r)])).item(),
        "gathered": distributed.all_gather(torch.arange(r + 1.0)).tolist(),  # sizes 1, 2
        "logsumexp": distributed.logsumexp(values).item(),
        "broadcast": distributed.broadcast_object(f"from {r}"),
        "share": distributed.share(5),
        "seed": distributed.rank_seed(3),
        "gradients": reduced_gradients(),
        "order": learned_gradient_order(),
        "busy_waits": distributed.busy_waits(),
    }


def reduced_gradients():
    """Bucketed, overlapped reduction of a float32 and a float64 parameter (two buckets)
    and a parameter outside the graph, against the plain weighted sum; then a second
    backward inside one block."""
    r = distributed.rank()
    small = torch.nn.Parameter(torch.ones(3))
    wide = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    unused = torch.nn.Parameter(torch.ones(2))
    weight = 0.25 if r == 0 else 0.75
    with distributed.reduce_gradients([small, wide, unused], weight=weight, bucket_bytes=8):
        ((r + 1.0) * small).sum().backward()
        ((r + 2.0) * wide.square()).sum().backward()
    reduced = {"small": small.grad.tolist(), "wide": wide.grad.tolist(),
               "wide_dtype": str(wide.grad.dtype), "unused": unused.grad}
    twice = None
    try:
        with distributed.reduce_gradients([small], weight=0.5):
            small.sum().backward()
            small.sum().backward()
    except RuntimeError as error:
        twice = str(error)
    return {**reduced, "twice": twice}


def learned_gradient_order():
    """Three updates of two parameters, through one GradientOrder; backward reaches
    them in the order they are listed on rank 0 and in the other order on rank 1. Returns
    the learned order after each update, the reduced gradients and the sizes of the
    all-reduces in the order they started."""
    import torch.distributed as dist

    r = distributed.rank()
    first, second = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.full((3,), 2.0))
    order = distributed.GradientOrder()
    before = order.known([first, second])
    seen, grads, started = [], [], []
    all_reduce = dist.all_reduce

    def recorded(tensor, *args, **kwargs):
        started[-1].append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    arrived = []  # this rank's own order, which rank 1 does not keep
    hooks = [p.register_post_accumulate_grad_hook(
        lambda p: arrived.append("first" if p is first else "second")) for p in (first, second)]
    dist.all_reduce = recorded
    try:
        for update in range(3):
            inner, outer = (first, second) if r == 0 else (second, first)
            started.append([])
            with distributed.reduce_gradients([first, second], weight=0.5, bucket_bytes=8,
                                              order=order):
                (outer.sum() * (inner * (update + 1.0)).sum()).backward()
            known = order.known([first, second])
            seen.append(None if known is None else
                        ["first" if p is first else "second" for p in known])
            grads.append([first.grad.tolist(), second.grad.tolist()])
            first.grad = second.grad = None
    finally:
        dist.all_reduce = all_reduce
        for hook in hooks:
            hook.remove()
    return {"before": before, "seen": seen, "grads": grads, "started": started,
            "arrived": arrived[:2],
            "other_list": order.known([second, first])}


def test_buckets_follow_the_order_backward_produced_on_rank_0(two_ranks):
    # backward reaches the inner factor first: `first` on rank 0, `second` on rank 1
    assert [rank["order"]["arrived"] for rank in two_ranks] == [["first", "second"],
                                                                ["second", "first"]]
    for r in (rank["order"] for rank in two_ranks):
        assert r["before"] is None and r["other_list"] is None
        assert r["seen"] == [["first", "second"]] * 3
        # first update: the reverse of the list (second, 3 numbers, then first, 2);
        # then rank 0's order of arrival on every rank
        assert r["started"] == [[3, 2], [2, 3], [2, 3]]
    # on both ranks the loss is c * sum(first) * sum(second), first = 1, second = 2:
    # d/d first = c * 6, d/d second = c * 2, and the weights 0.5 + 0.5 keep them
    for rank in two_ranks:
        for update, grads in enumerate(rank["order"]["grads"]):
            c = update + 1.0
            assert grads == [[6 * c] * 2, [2 * c] * 3]


def test_a_learned_order_is_forgotten_with_its_parameters():
    order, params = distributed.GradientOrder(), [torch.ones(2), torch.ones(3)]
    order.learn(params, [1])  # one process: its own arrivals; the rest last to first
    assert order.known(params) == [params[1], params[0]]
    del params
    assert order.known([torch.ones(3), torch.ones(2)]) is None


def test_the_first_bucket_closes_at_its_own_size():
    params = [torch.nn.Parameter(torch.ones(n)) for n in (1, 1, 1, 1, 1)]  # 4 bytes each
    buckets = distributed._GradientBuckets(params, 1.0, bucket_bytes=12, first_bytes=4)
    assert [len(b) for b in buckets.buckets] == [1, 3, 1]
    assert [len(b) for b in distributed._GradientBuckets(params, 1.0, 12).buckets] == [3, 2]


class _Work:
    def __init__(self, polls_left: int) -> None:
        self.polls, self.polls_left, self.waited = 0, polls_left, False

    def is_completed(self) -> bool:
        self.polls += 1
        self.polls_left -= 1
        return self.polls_left < 0

    def wait(self) -> None:
        self.waited = True


@pytest.mark.parametrize("polls", [True, False])
def test_wait_polls_until_the_collective_is_done_then_waits_for_its_result(
        polls, monkeypatch):
    monkeypatch.setattr(distributed, "busy_waits", lambda: polls)
    work = _Work(polls_left=2)
    distributed.wait(work)
    assert work.waited and work.polls == (3 if polls else 0)


def test_gradients_reduced_during_backward_are_the_weighted_sum_over_ranks(two_ranks):
    # rank 0 holds 1 and 2 * 2, rank 1 holds 2 and 3 * 2; weights 0.25 and 0.75
    for r in (rank["gradients"] for rank in two_ranks):
        assert r["small"] == [0.25 * 1 + 0.75 * 2] * 3
        assert r["wide"] == [0.25 * 4 + 0.75 * 6] * 4 and r["wide_dtype"] == "torch.float64"
        assert r["unused"] is None
        assert "exactly one backward" in r["twice"]


def failing_on_rank_1():
    if distributed.rank() == 1:
        raise RuntimeError("rank 1 broke")
    return "fine"


def hanging_on_rank_1():
    if distributed.rank() == 1:
        time.sleep(600)
    return "fine"


@pytest.fixture(scope="module")
def two_ranks():
    return distributed.run_local(collectives, 2, timeout=120)


def test_run_local_gives_every_ranks_result_and_the_collectives_agree(two_ranks):
    ranks = two_ranks
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world"] == 2
    expected_lse = torch.logsumexp(torch.tensor([0.0, 1.0, 10.0, 11.0]), 0).item()
    for r in ranks:
        assert r["sum"] == 3.0 and r["max"] == 1.0
        assert r["gathered"] == [0.0, 0.0, 1.0]
        assert r["logsumexp"] == pytest.approx(expected_lse, rel=1e-6)
        assert r["broadcast"] == "from 0"
    assert [r["share"] for r in ranks] == [slice(0, 3), slice(3, 5)]
    assert ranks[0]["seed"] == 3 and ranks[1]["seed"] != 3


def test_a_failing_rank_raises_with_its_traceback():
    with pytest.raises(distributed.DistributedError, match="rank 1 failed.*rank 1 broke"):
        distributed.run_local(failing_on_rank_1, 2, timeout=120)


def test_a_rank_that_never_finishes_is_killed_at_the_timeout():
    started = time.monotonic()
    # on a loaded machine rank 0 may not have started its work in 20 s either
    with pytest.raises(TimeoutError, match=r"ranks did not finish within 20 s \(ranks (0, )?1\)"):
        distributed.run_local(hanging_on_rank_1, 2, timeout=20)
    assert time.monotonic() - started < 60


def summing_how_it_waits():
    return distributed.busy_waits(), distributed.all_reduce_sum(torch.ones(2)).tolist()


def test_ranks_poll_gloo_collectives_when_each_has_a_core_unless_told(two_ranks,
                                                                        monkeypatch):
    cores = len(os.sched_getaffinity(0))  # the ranks run one thread each
    expected = os.environ.get("POSTERITY_BUSY_WAIT", "1" if 2 <= cores else "0") == "1"
    assert [r["busy_waits"] for r in two_ranks] == [expected] * 2
    for setting, polls in (("0", False), ("1", True)):
        monkeypatch.setenv("POSTERITY_BUSY_WAIT", setting)
        assert distributed.run_local(summing_how_it_waits, 2) == [(polls, [2.0, 2.0])] * 2


def summing_with_a_rank_that_never_comes():
    import datetime

    import torch.distributed as dist

    group = dist.new_group([0, 1], timeout=datetime.timedelta(seconds=3))
    if distributed.rank() == 1:
        time.sleep(600)
    distributed.wait(dist.all_reduce(torch.ones(1), group=group, async_op=True))


def test_a_polling_rank_fails_at_the_timeout_when_a_peer_never_comes(monkeypatch):
    monkeypatch.setenv("POSTERITY_BUSY_WAIT", "1")
    started = time.monotonic()
    with pytest.raises(distributed.DistributedError, match="rank 0 failed.*Timed out"):
        distributed.run_local(summing_with_a_rank_that_never_comes, 2, timeout=100)
    assert time.monotonic() - started < 60


def test_run_local_refuses_a_function_the_processes_cannot_import():
    with pytest.raises(TypeError, match="module-level function"):
        distributed.run_local(lambda: 1, 2)


def test_nccl_without_cuda_says_to_use_gloo(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(distributed.DistributedError, match="needs CUDA.*use 'gloo'"):
        distributed.init_process_group("nccl")
