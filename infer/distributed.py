"""More than one process: the process group, who is who, and the few collectives the
engines share.

posterity builds on PyTorch's own distributed engine, :mod:`torch.distributed`,
launched by ``torchrun`` (one node: ``torchrun --nproc-per-node 2 train.py``; several:
add ``--nnodes``, ``--node-rank`` or ``--rdzv-endpoint``). Gloo runs on CPUs, NCCL on
GPUs. Call :func:`init_process_group` once at the top of the script; from then on the
engines split their work (see the README, "More than one process"):

* amortized gradient engines (:class:`~posterity.infer.amortized.AmortizedVI`,
  :class:`~posterity.infer.wake_sleep.WakeSleep`) split every global minibatch over the ranks and
  sum the row-weighted gradients (and NRWS's Fisher blocks);
* samplers run their chains on every rank with rank-distinct seeds and gather them;
* particle methods (the filter, PaRIS, PPG, score ascent) spread ``num_particles`` over
  the ranks, reduce the normalizing constants and resample globally.

Outside a process group every function here is the single-process identity
(``rank() == 0``, ``world_size() == 1``, collectives return their input), so engines
call them unconditionally.

:func:`run_local` starts ``n`` local processes in a group and returns what each
returned: what the tests and notebooks use instead of ``torchrun``.

Example:
    >>> import torch
    >>> world_size(), rank(), is_main()
    (1, 0, True)
    >>> all_reduce_sum(torch.tensor([1.0, 2.0]))  # one process: the identity
    tensor([1., 2.])
    >>> share(10)  # rows of a global batch of 10 that this rank takes
    slice(0, 10, None)
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import socket
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistributedError",
    "all_gather",
    "all_gather_objects",
    "all_reduce_max",
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "broadcast",
    "broadcast_object",
    "busy_waits",
    "check_divisible",
    "GradientOrder",
    "gradient_weight",
    "init_process_group",
    "is_initialized",
    "is_main",
    "local_rank",
    "logsumexp",
    "rank",
    "rank_seed",
    "reduce_gradients",
    "run_local",
    "separate_stream",
    "share",
    "share_sizes",
    "world_size",
]

_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = 300.0


class DistributedError(RuntimeError):
    """The process group cannot be set up or a collective cannot be run as asked."""


_BUSY_WAIT: list[bool | None] = [None]


def init_process_group(backend: str | None = None, *, timeout: float | None = None,
                       busy_wait: bool | None = None) -> int:
    """Join the process group that ``torchrun`` set up; returns this process's rank.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; ``None`` picks NCCL when CUDA is available
            (and sets this process's device to ``cuda:LOCAL_RANK``), gloo otherwise.
        timeout: seconds a collective may wait for the other ranks before it fails
            (default ``POSTERITY_DIST_TIMEOUT`` or 300), so a lost rank ends the run
            with an error instead of a hang.
        busy_wait: on gloo, whether a rank waiting for its gradient all-reduce polls
            it (yielding its CPU to any other runnable thread) instead of sleeping
            until woken; see :func:`wait`. ``None``: ``POSTERITY_BUSY_WAIT`` if set,
            else when the node has a core for every rank's threads
            (:func:`busy_waits`). NCCL never polls: its collectives run on the GPU
            while the CPU goes on.

    Raises:
        DistributedError: torchrun's environment (``RANK``, ``WORLD_SIZE``,
            ``MASTER_ADDR``, ``MASTER_PORT``) is missing, or a group already exists with
            another backend.
    """
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedError(
            f"init_process_group() needs torchrun's environment; {', '.join(missing)} "
            "not set. Launch with `torchrun --nproc-per-node N script.py` (or "
            "posterity.infer.distributed.run_local from Python)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if busy_wait is not None:
        _BUSY_WAIT[0] = busy_wait
    if dist.is_initialized():
        if dist.get_backend() != backend:
            raise DistributedError(f"a process group with backend {dist.get_backend()!r} "
                                   f"already exists; asked for {backend!r}")
        return dist.get_rank()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError("backend 'nccl' needs CUDA, and this torch sees no GPU; "
                                   "use 'gloo' (the default without CUDA)")
        torch.cuda.set_device(local_rank())
    if timeout is None:
        timeout = float(os.environ.get("POSTERITY_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank()


def is_initialized() -> bool:
    """Whether this process is in a process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if is_initialized():
        dist.barrier()


def rank_seed(seed: int | None, rank_: int | None = None) -> int | None:
    """A seed distinct per rank: ``seed + 1000003 * rank`` (``seed`` itself on rank 0,
    so a one-process run is unchanged; ``None`` stays ``None``). ``rank_`` defaults to
    this process's rank."""
    if seed is None:
        return None
    return seed + 1_000_003 * (rank() if rank_ is None else rank_)


def separate_stream() -> None:
    """Move every rank but 0 to a random stream of its own: reseed torch's generators
    with :func:`rank_seed` of a seed drawn from the current stream. Rank 0 (and a single
    process) keeps its stream, so what it draws is what one process would draw; the
    other ranks draw differently even when every rank was seeded alike. Not a
    collective."""
    if rank() > 0:
        torch.manual_seed(rank_seed(int(torch.randint(0, 2**62, ()))))


def share_sizes(total: int, size: int | None = None) -> list[int]:
    """How ``total`` rows split over ``size`` ranks (default: the world): contiguous
    blocks whose sizes differ by at most one, the larger ones first."""
    size = world_size() if size is None else size
    base, extra = divmod(total, size)
    return [base + (r < extra) for r in range(size)]


def share(total: int) -> slice:
    """This rank's block of ``total`` rows, per :func:`share_sizes`."""
    sizes = share_sizes(total)
    start = sum(sizes[: rank()])
    return slice(start, start + sizes[rank()])


def check_divisible(name: str, value: int) -> int:
    """``value // world_size()``, or a ValueError naming ``name`` when the world size does
    not divide it."""
    size = world_size()
    if value % size:
        raise ValueError(f"{name} must be divisible by the number of processes ({size}) "
                         f"so that every rank holds the same share, got {value}")
    return value // size


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks, as a new tensor (the input is left alone)."""
    if not is_initialized():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_sum_async(tensor: Tensor) -> Any:
    """Start summing ``tensor`` over ranks in place, without waiting; pass the returned
    handle to :func:`wait` before reading ``tensor``. Every rank must start the same
    collectives in the same order, as for the blocking ones."""
    return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)


def busy_waits() -> bool:
    """Whether :func:`wait` polls: on a gloo group, as ``init_process_group``'s
    ``busy_wait`` or ``POSTERITY_BUSY_WAIT`` (``0`` or ``1``) say, else when this node's
    ranks have a core each for their intra-op threads (``LOCAL_WORLD_SIZE`` times
    ``torch.get_num_threads()`` at most the cores this process may use): a polling rank
    would take CPU from the others on a node with more threads than cores."""
    if not is_initialized() or dist.get_backend() != "gloo":
        return False
    chosen = _BUSY_WAIT[0]
    if chosen is None and "POSTERITY_BUSY_WAIT" in os.environ:
        setting = os.environ["POSTERITY_BUSY_WAIT"]
        if setting not in ("0", "1"):
            raise ValueError(f"POSTERITY_BUSY_WAIT must be 0 or 1, got {setting!r}")
        chosen = setting == "1"
    if chosen is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        chosen = local * torch.get_num_threads() <= _cores()
    return chosen


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def wait(work: dist.Work) -> None:
    """Block until a collective of the default group started with ``async_op=True``
    (by :func:`all_reduce_sum_async`, or by the gradient buckets of
    :func:`reduce_gradients`) has finished; raise its error.

    On gloo, when :func:`busy_waits`, the rank polls the collective, yielding its CPU
    to any other runnable thread between polls (as MPI and NCCL wait by default),
    instead of sleeping until gloo's thread wakes it: on a virtual machine a CPU left
    idle by a sleeping rank takes milliseconds to wake. Measured on the project's
    2-vCPU machine, the gradient all-reduce of a VI update waited 2.0 ms sleeping and
    1.0 ms polling, but polling did not help the particle filter's all-gather, whose
    wait is the slower rank's lag (the polling rank then takes CPU from its
    neighbour), so the other collectives of this module block in torch. The price is
    CPU time: a waiting rank shows as busy. ``busy_wait=False`` in
    :func:`init_process_group` (or ``POSTERITY_BUSY_WAIT=0``) sleeps instead.
    """
    if busy_waits():
        while not work.is_completed():
            _yield()
    work.wait()


_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: None)


def all_reduce_max(tensor: Tensor) -> Tensor:
    """The elementwise maximum over ranks, as a new tensor."""
    if not is_initialized():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def logsumexp(values: Tensor, dim: int = -1) -> Tensor:
    """``log Σ exp(values)`` over ``dim`` and over every rank's ``values``: a stable
    global log-normalizer. ``[..., n, ...] -> [...]``."""
    local_max = values.max(dim=dim, keepdim=True).values
    if not is_initialized():
        return torch.logsumexp(values, dim=dim)
    shift = all_reduce_max(local_max)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = all_reduce_sum((values - shift).exp().sum(dim=dim, keepdim=True))
    return (total.log() + shift).squeeze(dim)


def all_gather(tensor: Tensor, dim: int = 0) -> Tensor:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order; the ranks may
    hold different sizes along ``dim`` (the others must agree)."""
    if not is_initialized():
        return tensor
    tensor = tensor.contiguous()
    sizes = all_gather_objects(tensor.shape[dim])
    largest = max(sizes)
    if tensor.shape[dim] < largest:
        pad_shape = list(tensor.shape)
        pad_shape[dim] = largest - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
    pieces = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(pieces, tensor)
    return torch.cat([piece.narrow(dim, 0, n) for piece, n in zip(pieces, sizes)], dim=dim)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Rank ``src``'s ``tensor`` on every rank (in place, also returned)."""
    if is_initialized():
        dist.broadcast(tensor, src=src)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


_GRADIENT_WEIGHT: list[float | None] = [None]


@contextlib.contextmanager
def gradient_weight(weight: float | None) -> Iterator[None]:
    """Within the block, :func:`average_gradients` (called by
    :func:`~posterity.infer.optim.optimizer_step`) weights this rank's gradient by
    ``weight`` before summing over ranks.

    The shared loop sets ``n_rank / n_global`` when it split a global minibatch over the
    ranks, and ``1.0`` for engines whose loss on each rank is already that rank's part of
    one global estimate (particles spread over the ranks), so that the sum is the
    global gradient. Outside any block the weight is ``1 / world_size()`` (a mean).
    """
    previous = _GRADIENT_WEIGHT[0]
    _GRADIENT_WEIGHT[0] = weight
    try:
        yield
    finally:
        _GRADIENT_WEIGHT[0] = previous


def _resolve_weight(weight: float | None) -> float:
    if weight is None:
        weight = _GRADIENT_WEIGHT[0]
    return 1.0 / world_size() if weight is None else weight


BUCKET_BYTES = 25 * 2**20
"""Gradient bytes per all-reduce, as :class:`~torch.nn.parallel.DistributedDataParallel`'s
default ``bucket_cap_mb=25``: every collective pays a latency, so a model of a few MB is
reduced in one call, and only larger ones start buckets while ``backward`` runs."""

FIRST_BUCKET_BYTES = 2**20
"""The first bucket's size once :class:`GradientOrder` knows the order in which
``backward`` produces the gradients, as ``DistributedDataParallel``'s (1 MiB): small,
so that its all-reduce starts while the rest is computed."""


class _GradientBuckets:
    """Parameters cut into buckets (one dtype and device per bucket, in the order given;
    a bucket closes once it holds ``bucket_bytes``, the first once it holds
    ``first_bytes``), each reduced by one flattened all-reduce of its weighted
    gradients. Buckets are launched in index order only, so every rank issues the same
    collectives in the same order whatever order its gradients arrive in."""

    def __init__(self, params: list[Tensor], weight: float, bucket_bytes: int,
                 first_bytes: int | None = None) -> None:
        self.weight, self.buckets, self.launched = weight, [], []
        filled = 0  # bytes in the last bucket
        for p in params:
            last = self.buckets[-1] if self.buckets else None
            cap = first_bytes if first_bytes is not None and len(self.buckets) == 1 \
                else bucket_bytes
            if (last is None or last[0].dtype != p.dtype or last[0].device != p.device
                    or filled >= cap):
                self.buckets.append([p])
                filled = 0
            else:
                last.append(p)
            filled += p.numel() * p.element_size()
        self.next = 0

    def launch_ready(self, ready: Callable[[int], bool]) -> None:
        while self.next < len(self.buckets) and ready(self.next):
            with_grad = [p for p in self.buckets[self.next] if p.grad is not None]
            if with_grad:
                flat = torch.cat([p.grad.reshape(-1) for p in with_grad]) * self.weight
                work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)
                self.launched.append((with_grad, flat, work))
            self.next += 1

    def finish(self) -> None:
        self.launch_ready(lambda _: True)
        for params, flat, work in self.launched:
            wait(work)
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset: offset + n].view_as(p.grad))
                offset += n


class GradientOrder:
    """The order in which ``backward`` produces the gradients of one list of
    parameters, learned from one update, as
    :class:`~torch.nn.parallel.DistributedDataParallel` rebuilds its buckets after its
    first iteration.

    Pass one object to every :func:`reduce_gradients` call of the same parameters
    (:func:`~posterity.infer.optim.optimizer_step` keeps one per optimizer): the first
    call records the order in which the gradients arrived and sends rank 0's to every
    rank (so that all ranks cut the same buckets); later calls cut the buckets in that
    order with a first bucket of :data:`FIRST_BUCKET_BYTES`, whose all-reduce starts
    while ``backward`` is still computing the rest. The parameters' own order (that of
    ``model.parameters()``, say) often differs from backward's: a VAE's decoder
    gradients arrive first although its parameters may be listed after the encoder's.
    A different list of parameters starts learning again (one more broadcast), so
    pass each list its own object: one that alternates between lists relearns every
    time and never uses what it learned.
    """

    def __init__(self) -> None:
        self._params: list[weakref.ref[Tensor]] = []
        self._order: list[int] = []

    def known(self, params: list[Tensor]) -> list[Tensor] | None:
        """``params`` in the learned order, or ``None`` before it is known for them."""
        if len(params) != len(self._params) or any(
                ref() is not p for ref, p in zip(self._params, params)):
            return None
        return [params[i] for i in self._order]

    def learn(self, params: list[Tensor], arrivals: list[int]) -> None:
        """Keep rank 0's ``arrivals`` (indices into ``params``), then the parameters
        that received no gradient, last to first: a collective, every rank calls it."""
        arrivals = broadcast_object(arrivals)
        seen = set(arrivals)
        self._order = arrivals + [i for i in reversed(range(len(params))) if i not in seen]
        self._params = [weakref.ref(p) for p in params]


def average_gradients(parameters: Iterable[Tensor], weight: float | None = None) -> None:
    """Replace each parameter's ``.grad`` by its weighted sum over ranks (flattened
    all-reduces of about :data:`BUCKET_BYTES` each).

    With ``weight = n_rank / n_global`` (this rank's rows over the global batch) and a
    loss that is a mean (or an unbiased, batch-normalized estimate) over the local rows,
    the result is the gradient of the same loss on the global batch. ``None`` means
    the weight set by :func:`gradient_weight`, else ``1 / world_size()``. Parameters
    without a gradient are skipped (the ranks must agree on which have one).
    :func:`reduce_gradients` does the same while ``backward`` runs.
    """
    if not is_initialized():
        return
    _GradientBuckets(list(parameters), _resolve_weight(weight), BUCKET_BYTES).finish()


@contextlib.contextmanager
def reduce_gradients(parameters: Iterable[Tensor], weight: float | None = None,
                     bucket_bytes: int = BUCKET_BYTES, *,
                     order: GradientOrder | None = None) -> Iterator[None]:
    """Run one ``backward()`` inside the block: on leaving it, every parameter's
    ``.grad`` is its weighted sum over ranks, as after :func:`average_gradients`, but
    each bucket's all-reduce starts while ``backward`` is still computing the
    gradients of other layers, as :class:`torch.nn.parallel.DistributedDataParallel`
    does, so that communication overlaps computation.

    Buckets follow the reverse of the parameters' order (the order ``backward`` tends
    to reach them) or, with an ``order`` that has learned it from an earlier call, the
    order in which ``backward`` produced them, with a small first bucket; they start
    in that order only. As for :func:`average_gradients`, the ranks must agree on
    which parameters receive a gradient. Outside a process group the block runs as it
    is.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> with reduce_gradients([w]):  # one process: nothing to exchange
        ...     (2 * w).sum().backward()
        >>> w.grad
        tensor([2., 2., 2.])
    """
    if not is_initialized():
        yield
        return
    params = list(dict.fromkeys(p for p in parameters if p.requires_grad))
    learned = order.known(params) if order is not None else None
    if learned is None:
        buckets = _GradientBuckets(params[::-1], _resolve_weight(weight), bucket_bytes)
    else:
        buckets = _GradientBuckets(learned, _resolve_weight(weight), bucket_bytes,
                                   min(FIRST_BUCKET_BYTES, bucket_bytes))
    index = {id(p): i for i, bucket in enumerate(buckets.buckets) for p in bucket}
    position = {id(p): i for i, p in enumerate(params)}
    waiting = [len(bucket) for bucket in buckets.buckets]
    arrivals: list[int] = []
    done: set[int] = set()

    def arrived(p: Tensor) -> None:
        if id(p) in done:
            raise RuntimeError("reduce_gradients: a parameter received a second gradient; "
                               "run exactly one backward() inside the block")
        done.add(id(p))
        arrivals.append(position[id(p)])
        waiting[index[id(p)]] -= 1
        buckets.launch_ready(lambda i: waiting[i] == 0)

    handles = [p.register_post_accumulate_grad_hook(arrived) for p in params]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    buckets.finish()
    if order is not None and learned is None:
        order.learn(params, arrivals)


# --- running a group of local processes (tests, notebooks) -------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank_: int, size: int, port: int, fn: Callable[..., Any], args: Sequence[Any],
            queue: Any, threads: int, timeout: float) -> None:
    os.environ.update({"RANK": str(rank_), "LOCAL_RANK": str(rank_), "WORLD_SIZE": str(size),
                       "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "POSTERITY_PROGRESS": "0"})
    torch.set_num_threads(threads)
    try:
        init_process_group("gloo", timeout=timeout)
        result = fn(*args)
        queue.put((rank_, True, pickle.dumps(result)))
    except BaseException as error:  # reported to the parent, which raises it
        import traceback
        queue.put((rank_, False, f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local(fn: Callable[..., Any], nprocs: int = 2, args: Sequence[Any] = (), *,
              timeout: float = 120.0, threads: int = 1) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` fresh local processes joined in a gloo process
    group (as ``torchrun --nproc-per-node nprocs`` would) and return each rank's result,
    in rank order.

    ``fn`` must be importable by name (a module-level function) and its result picklable.
    The processes are killed after ``timeout`` seconds, so a rank that waits forever
    cannot hang the caller; their collectives time out a little earlier (after 90 % of
    ``timeout``), so that a rank stuck in a collective fails with its traceback.

    Raises:
        DistributedError: a rank raised (the message holds its traceback) or exited
            without a result.
        TimeoutError: the ranks did not finish within ``timeout`` seconds.
    """
    import multiprocessing as mp
    import queue as queue_module
    import time

    if nprocs < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    name = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<lambda>" in name or "<locals>" in name:
        raise TypeError("run_local needs a module-level function that the spawned processes "
                        f"can import by name, got {fn!r}; define it at the top level of a "
                        ".py file")
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, daemon=True,
                                 args=(r, nprocs, port, fn, args, results, threads,
                                       0.9 * timeout))
                 for r in range(nprocs)]
    for p in processes:
        p.start()
    outcomes: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outcomes) < nprocs:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = ", ".join(str(r) for r in range(nprocs) if r not in outcomes)
                raise TimeoutError(f"run_local: {nprocs - len(outcomes)} of {nprocs} ranks "
                                   f"did not finish within {timeout:g} s (ranks {missing})")
            try:
                r, ok, payload = results.get(timeout=min(left, 1.0))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(processes)
                        if r not in outcomes and not p.is_alive() and p.exitcode != 0]
                if dead:
                    raise DistributedError(f"run_local: rank {dead[0]} exited with status "
                                           f"{processes[dead[0]].exitcode} and no result") from None
                continue
            if not ok:
                raise DistributedError(f"run_local: rank {r} failed: {payload}")
            outcomes[r] = pickle.loads(payload)
    finally:
        for p in processes:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [outcomes[r] for r in range(nprocs)]

