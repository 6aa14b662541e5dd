"""One particle system spread over the ranks of a process group.

Rank ``r`` of ``W`` holds particles ``r n, ..., (r + 1) n - 1`` of the global cloud of
``N = W n`` (the rank-order concatenation), with log-weights normalized over all ranks.
This module holds what the particle filter and PaRIS need beyond
:mod:`posterity.infer.distributed`:

* **Global resampling, exact.** Every rank publishes three numbers about its weights
  (:func:`summarize`); from them every rank computes the same offspring counts per rank
  (:func:`offspring_counts`), each rank draws its own offspring among its own particles
  (:func:`local_offspring`), and ranks with more than ``n`` offspring hand their surplus
  to ranks in deficit (:func:`transfer_plan`, :func:`offspring`). The multiset of
  ancestors has exactly the law of the single-process scheme with the same ``N``:

  - ``systematic``: the grid ``(k + U) / N`` with one ``U`` common to all ranks, each
    rank keeping the grid points in its slice ``[c_r, c_{r+1})`` of the global CDF;
  - ``stratified``: one uniform per stratum ``[k/N, (k+1)/N)``; the (at most ``W - 1``)
    strata that straddle a rank boundary use uniforms common to all ranks, the others
    a rank's own;
  - ``multinomial``: the counts per rank are ``Multinomial(N, totals)`` (common draws),
    then each rank draws its count i.i.d. from its own weights;
  - ``residual``: ``floor(N W_i)`` copies locally, the ``R`` remaining draws split over
    the ranks by ``Multinomial(R, residual totals)``.

  Only the order of the particles differs from one process; the filter is invariant
  under permutations of equally weighted particles, so every estimate has the law of
  the single-process filter.
* **Conditional resampling** for conditional SMC (PPG's sweeps,
  :func:`conditional_resample`): the reference keeps the last global slot and the
  other ``N - 1`` offspring are global multinomial draws, spread as above.
* **Common randomness.** :func:`shared_generator` returns a ``torch.Generator`` seeded
  identically on every rank (from rank 0), used for the draws the ranks must agree on,
  and first makes sure the ranks' own generators differ (:func:`distinct_streams`):
  ranks that start from the same state, as ``torchrun`` processes do when nobody seeds
  them, would propagate copies of the same particles.
* :func:`gather_rows`: an all-gather of equal-sized blocks whose backward pass sums
  the gradient over ranks and returns each rank its block (what score ascent needs to
  differentiate PaRIS statistics that cross ranks).

**One collective per filter step.** The particle filter resamples with
:func:`resample_in_place`: every rank keeps all its offspring, propagates and weights
them, and the surplus rows travel, already moved, inside the all-gather that normalizes
the weights (:func:`normalize_moving`), which also carries the filtering moments. Per
step every rank receives ``W (3 + 2 d + s_max (d + 2))`` float64, ``s_max`` the
largest surplus (a few rows when the ranks' weight totals are balanced; at worst
``(W - 1) n`` when one rank holds all the weight). PPG's conditional sweeps do the
same (:func:`conditional_resample_in_place`). :func:`resample` and
:func:`conditional_resample` exchange the surplus before the move instead (a second
all-gather); the engines use them where rows must carry an autograd graph.

Example:
    >>> import torch
    >>> weights = torch.tensor([0.1, 0.2, 0.3, 0.4])  # a one-rank "world"
    >>> summaries = summarize(weights, 4).unsqueeze(0)
    >>> generator = torch.Generator().manual_seed(0)
    >>> counts, shared = offspring_counts("systematic", summaries, 4, generator)
    >>> int(counts.sum()), local_offspring("systematic", weights, summaries, 0, 4, shared).shape
    (4, torch.Size([4]))
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .. import distributed
from .resampling import ancestors_from_counts_below, grid_counts_below, normalized_cdf

SCHEMES = ("systematic", "stratified", "multinomial", "residual")


# --- the counts every rank agrees on ----------------------------------------------------


def summarize(weights: Tensor, num: int) -> Tensor:
    """What a rank publishes about its weights ``[n]`` (normalized over all ranks):
    ``[total, Σ floor(num W_i), Σ (num W_i - floor(num W_i))]`` in float64, ``[3]``."""
    expected = weights.double() * num
    floors = expected.floor()
    return torch.stack([weights.double().sum(), floors.sum(), (expected - floors).sum()])


def _boundaries(totals: Tensor) -> Tensor:
    """The ranks' slices of the global CDF: ``c_0 = 0 <= c_1 <= ... <= c_W = 1``."""
    cumulative = torch.cat([totals.new_zeros(1), totals.cumsum(0)])
    cumulative = cumulative / cumulative[-1]
    cumulative[-1] = 1.0
    return cumulative


def _systematic_starts(bounds: Tensor, num: int, u: Tensor) -> Tensor:
    """The first grid index ``k`` with ``(k + u) / N >= c_r``, for every rank, and
    ``N``: ``[W + 1]`` (rank ``r`` takes ``k`` in ``[starts[r], starts[r + 1])``)."""
    starts = (bounds * num - u).ceil().clamp(0, num).long()
    starts[0], starts[-1] = 0, num
    return starts


def _interior(bounds: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """Strata ``[k/N, (k+1)/N)`` inside each rank's slice: ``k`` in
    ``[first[r], stop[r])``, ``[W]`` each (``stop <= first`` when there are none)."""
    return (bounds[:-1] * num).ceil().long(), (bounds[1:] * num).floor().long()


def _straddling(bounds: Tensor, num: int, shared: Tensor) -> tuple[Tensor, Tensor]:
    """The points ``(k + U) / N`` of the strata with a rank boundary strictly inside, each
    with its owner rank. Stratum ``k`` uses the common uniform of its first boundary."""
    inner = bounds[1:-1] * num
    strictly = inner != inner.floor()
    strata, uniforms = inner.floor()[strictly], shared[strictly]
    if strata.numel():
        keep = torch.cat([strata.new_ones(1, dtype=torch.bool), strata[1:] != strata[:-1]])
        strata, uniforms = strata[keep], uniforms[keep]
    points = (strata + uniforms) / num
    return points, torch.searchsorted(bounds[1:-1].contiguous(), points, right=True)


def _split_multinomial(total: int, probabilities: Tensor, generator: torch.Generator) -> Tensor:
    """``Multinomial(total, probabilities)`` over the ``W`` ranks, by conditional
    binomials drawn from ``generator`` (a loop over ranks, not particles)."""
    counts = torch.zeros(probabilities.shape[0], dtype=torch.long)
    positive = torch.nonzero(probabilities > 0).flatten()
    if total == 0 or not positive.numel():
        return counts
    last, left = int(positive[-1]), total
    for r in range(last):
        rest = float(probabilities[r:].sum())
        p = torch.tensor(min(1.0, float(probabilities[r]) / rest), dtype=torch.float64)
        counts[r] = int(torch.binomial(torch.tensor(float(left), dtype=torch.float64), p,
                                       generator=generator))
        left -= int(counts[r])
    counts[last] = left
    return counts


def offspring_counts(scheme: str, summaries: Tensor, num: int, generator: torch.Generator
                     ) -> tuple[Tensor, Tensor]:
    """The number of offspring of every rank's particles, ``[W]`` (summing to ``num``),
    and the common draws ``shared`` that :func:`local_offspring` needs. Every rank calls
    it with the same ``summaries`` (``[W, 3]``, from :func:`summarize`) and the same
    generator state, and gets the same result."""
    if scheme not in SCHEMES:
        raise ValueError(f"resampling must be one of {sorted(SCHEMES)}, got {scheme!r}")
    summaries = summaries.double().cpu()
    totals = summaries[:, 0]
    bounds = _boundaries(totals)
    size = totals.shape[0]
    if scheme == "systematic":
        u = torch.rand((), dtype=torch.float64, generator=generator)
        return _systematic_starts(bounds, num, u).diff(), u.reshape(1)
    if scheme == "stratified":
        shared = torch.rand(size - 1, dtype=torch.float64, generator=generator)
        first, stop = _interior(bounds, num)
        _, owners = _straddling(bounds, num, shared)
        return (stop - first).clamp_min(0) + torch.bincount(owners, minlength=size), shared
    if scheme == "multinomial":
        counts = _split_multinomial(num, totals, generator)
        return counts, counts.double()
    floors = summaries[:, 1].round().long()
    rests = summaries[:, 2].clamp_min(0)
    extra = _split_multinomial(num - int(floors.sum()),
                               rests if float(rests.sum()) > 0 else totals, generator)
    return floors + extra, extra.double()


def local_offspring(scheme: str, weights: Tensor, summaries: Tensor, rank: int, num: int,
                    shared: Tensor) -> Tensor:
    """The indices ``[counts[rank]]`` into this rank's particles of its offspring under
    the global scheme, given its weights ``[n]`` (normalized over all ranks) and what
    :func:`offspring_counts` returned on every rank."""
    n, device = weights.shape[0], weights.device
    summaries, shared = summaries.double().cpu(), shared.cpu()
    bounds = _boundaries(summaries[:, 0])
    if scheme == "multinomial" or scheme == "residual":
        count = int(shared[rank])
        if scheme == "multinomial":
            indices = torch.zeros(0, dtype=torch.long, device=device)
            rest = weights
        else:
            expected = weights.double() * num
            floors = expected.floor()
            indices = torch.repeat_interleave(torch.arange(n, device=device), floors.long())
            rest = expected - floors
        if count:
            indices = torch.cat([indices, torch.multinomial(rest, count, replacement=True)])
        return indices
    lo, hi = float(bounds[rank]), float(bounds[rank + 1])
    if scheme == "systematic":  # the grid points k in [first, stop): counted, not searched
        starts = _systematic_starts(bounds, num, shared[0])
        first, stop = int(starts[rank]), int(starts[rank + 1])
        if stop <= first:
            return torch.zeros(0, dtype=torch.long, device=device)
        below = grid_counts_below(weights, num, float(shared[0]), lo, hi, first, stop - first)
        return ancestors_from_counts_below(below, stop - first)
    else:
        first, stop = _interior(bounds, num)
        strata = torch.arange(int(first[rank]), max(int(first[rank]), int(stop[rank])),
                              dtype=torch.float64, device=device)
        edges, owners = _straddling(bounds, num, shared)
        points = torch.cat([(strata + torch.rand_like(strata)) / num,
                            edges[owners == rank].to(device)])
    if not points.numel():
        return torch.zeros(0, dtype=torch.long, device=device)
    cumulative = lo + normalized_cdf(weights) * (hi - lo)
    return torch.searchsorted(cumulative, points).clamp_(max=n - 1)


# --- moving surplus offspring to the ranks in deficit ------------------------------------


def transfer_plan(counts: Tensor, size: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """How offspring counts ``[W]`` become ``size`` particles per rank (an int, or each
    rank's number ``[W]``): the rows each rank sends (its offspring past its first
    ``size``), the rows it receives, and where its received rows start in the rank-order
    list of all sent rows. ``[W]`` each."""
    sizes = torch.as_tensor(size, dtype=torch.long).expand(counts.shape[0])
    surplus = counts.long() - sizes
    send, receive = surplus.clamp_min(0), (-surplus).clamp_min(0)
    if int(send.sum()) != int(receive.sum()):
        raise ValueError(f"offspring counts {counts.tolist()} do not sum to "
                         f"{int(sizes.sum())}")
    offsets = torch.cat([receive.new_zeros(1), receive.cumsum(0)[:-1]])
    return send, receive, offsets


def _to_bytes(tensors: list[Tensor]) -> Tensor:
    """Rows of several tensors ``[m, ...]`` as one ``uint8`` table ``[m, bytes]``."""
    return torch.cat([t.contiguous().reshape(t.shape[0], math.prod(t.shape[1:]))
                      .view(torch.uint8) for t in tensors], 1)


def _from_bytes(table: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for t in like:
        width = t.element_size() * math.prod(t.shape[1:])
        rows = table[:, start:start + width].clone(memory_format=torch.contiguous_format)
        rows = rows.view(t.dtype)  # a fresh copy: aligned for the wider dtype
        out.append(rows.reshape((table.shape[0],) + t.shape[1:]))
        start += width
    return out


def _exchange(outgoing: list[Tensor], counts: Tensor, size: int | Tensor) -> list[Tensor]:
    """The rows this rank receives (``[receive[rank], ...]`` each, like ``outgoing``) when
    every rank sends its surplus rows ``outgoing`` (``[send[rank], ...]``) under
    :func:`transfer_plan`: one all-gather of the surplus rows (as bytes), padded to the
    largest. Called only when some rank has a surplus."""
    send, receive, offsets = transfer_plan(counts, size)
    me = distributed.rank()
    table = _to_bytes(outgoing)
    padded = table.new_zeros(int(send.max()), table.shape[1])
    padded[:table.shape[0]] = table
    pieces = [torch.empty_like(padded) for _ in range(counts.shape[0])]
    dist.all_gather(pieces, padded)
    sent = torch.cat([piece[:int(s)] for piece, s in zip(pieces, send)])
    start = int(offsets[me])
    return _from_bytes(sent[start:start + int(receive[me])], outgoing)


def offspring(particles: Tensor, indices: Tensor, offset: int, counts: Tensor,
              size: int | Tensor) -> tuple[Tensor, Tensor]:
    """This rank's offspring ``particles[indices]`` (``[counts[rank], ...]``) and their
    global indices ``indices + offset``, with the surplus rows past ``size`` sent to the
    ranks in deficit and theirs received: ``[size, ...]`` and ``[size]`` on every rank
    (``size[rank]`` rows when ``size`` is ``[W]``). At most one all-gather (none when no
    rank has a surplus). The kept rows are gathered straight into the result: at a
    million particles every pass over memory costs as much as the arithmetic."""
    keep = size if isinstance(size, int) else int(size[distributed.rank()])
    rows = min(indices.shape[0], keep)
    ancestors = indices.new_empty(keep)
    torch.add(indices[:rows], offset, out=ancestors[:rows])
    tracked = torch.is_grad_enabled() and particles.requires_grad  # out= has no autograd
    if tracked:
        new = particles[indices[:rows]]
    else:
        new = particles.new_empty((keep,) + particles.shape[1:])
        torch.index_select(particles, 0, indices[:rows], out=new[:rows])
    send, _, _ = transfer_plan(counts, size)
    if int(send.sum()):
        surplus = indices[keep:]
        received, ancestors[rows:] = _exchange([particles[surplus].detach(), surplus + offset],
                                               counts, size)
        if tracked:  # rows from other ranks carry no gradient to this rank's graph
            new = torch.cat([new, received])
        else:
            new[rows:] = received
    return new, ancestors


def _global_offspring(log_weights: Tensor, scheme: str, generator: torch.Generator,
                      totals: Tensor | None) -> tuple[Tensor, Tensor]:
    """Every rank's offspring count ``[W]`` and this rank's offspring, as indices into
    its own particles ``[counts[rank]]``, under the global ``scheme``."""
    n, me, size = log_weights.shape[0], distributed.rank(), distributed.world_size()
    num = n * size
    weights = log_weights.exp()
    if totals is not None and scheme != "residual":
        summaries = torch.stack([totals, totals.new_zeros(size), totals.new_zeros(size)], 1)
    else:
        summaries = _all_gather_stacked(summarize(weights, num))
    counts, shared = offspring_counts(scheme, summaries, num, generator)
    return counts, local_offspring(scheme, weights, summaries, me, num, shared)


def resample(particles: Tensor, log_weights: Tensor, scheme: str,
             generator: torch.Generator, totals: Tensor | None = None
             ) -> tuple[Tensor, Tensor]:
    """Global resampling of the cloud spread over the ranks: this rank's new particles
    ``[n, d]`` and their ancestors' global indices ``[n]`` (into the rank-order
    concatenation of every rank's ``particles``). ``log_weights`` ``[n]`` are
    normalized over all ranks; ``generator`` is shared (:func:`shared_generator`);
    ``totals`` ``[W]``, every rank's share of the weight as :func:`normalize` returned
    it, saves an all-gather (except for ``residual``)."""
    counts, indices = _global_offspring(log_weights, scheme, generator, totals)
    n = particles.shape[0]
    return offspring(particles, indices, distributed.rank() * n, counts, n)


class PendingMove(NamedTuple):
    """A global resampling whose surplus offspring have not moved yet
    (:func:`resample_in_place`, :func:`conditional_resample_in_place`): ``counts``
    ``[W]`` offspring per rank, ``own`` this rank's (its first ``own`` rows), ``sizes``
    ``[W]`` the offspring rows every rank holds after the move, and ``pinned`` the rows
    after them that stay on this rank (conditional SMC's reference, on the last rank)."""

    counts: Tensor
    own: int
    sizes: Tensor
    pinned: int = 0


def _in_place(particles: Tensor, indices: Tensor, counts: Tensor, sizes: Tensor,
              pinned: Tensor | None = None) -> tuple[Tensor, Tensor, PendingMove]:
    me, n = distributed.rank(), particles.shape[0]
    own, keep = indices.shape[0], int(sizes[me])
    parts = [indices]
    if own < keep:  # placeholders: any valid row, overwritten by the rows received
        parts.append(indices.new_zeros(keep - own))
    if pinned is not None:
        parts.append(pinned)
    if len(parts) > 1:
        indices = torch.cat(parts)
    return (particles.index_select(0, indices), indices + me * n,
            PendingMove(counts, own, sizes, 0 if pinned is None else pinned.shape[0]))


def resample_in_place(particles: Tensor, log_weights: Tensor, scheme: str,
                      generator: torch.Generator, totals: Tensor | None = None
                      ) -> tuple[Tensor, Tensor, PendingMove]:
    """Global resampling that moves nothing yet: every rank keeps all its offspring.

    Returns this rank's parents ``[max(own, n), d]`` and their global ancestor indices,
    and the :class:`PendingMove`. The first ``own`` rows are this rank's offspring (more
    than ``n`` on a rank with a surplus); a rank in deficit gets placeholder rows after
    them, which the rows it receives replace. The caller propagates and weights every
    row, and :func:`normalize_moving` sends the surplus rows, already moved and
    weighted, inside the all-gather that normalizes the weights: one collective per
    step instead of two (:func:`resample`'s exchange, then :func:`normalize`). Each row
    moves independently given its parent, so the law is that of :func:`resample`;
    the surplus rank propagates ``own - n`` rows more (a few when the ranks' weight
    totals are balanced)."""
    counts, indices = _global_offspring(log_weights, scheme, generator, totals)
    sizes = torch.full_like(counts, particles.shape[0])
    return _in_place(particles, indices, counts, sizes)


def conditional_shares(n: int, size: int) -> Tensor:
    """The rows every rank takes of conditional resampling's ``W n - 1`` offspring:
    ``[n, ..., n, n - 1]`` (``[W]``); the last rank's last slot is the reference's.

    Example:
        >>> conditional_shares(4, 3).tolist()
        [4, 4, 3]
    """
    shares = torch.full((size,), n, dtype=torch.long)
    shares[-1] -= 1
    return shares


def _conditional_offspring(log_weights: Tensor, generator: torch.Generator,
                           totals: Tensor | None) -> tuple[Tensor, Tensor]:
    """The global multinomial counts ``[W]`` of conditional resampling's ``N - 1``
    offspring and this rank's, as indices into its particles."""
    n, me, size = log_weights.shape[0], distributed.rank(), distributed.world_size()
    weights = log_weights.exp()
    if totals is None:
        totals = _all_gather_stacked(weights.sum(dtype=torch.float64)).cpu()
    summaries = torch.stack([totals, totals.new_zeros(size), totals.new_zeros(size)], 1)
    counts, shared = offspring_counts("multinomial", summaries, n * size - 1, generator)
    return counts, local_offspring("multinomial", weights, summaries, me, n * size - 1,
                                   shared)


def conditional_resample_in_place(particles: Tensor, log_weights: Tensor,
                                  generator: torch.Generator, totals: Tensor | None = None
                                  ) -> tuple[Tensor, Tensor, PendingMove]:
    """:func:`conditional_resample` that moves nothing yet, as :func:`resample_in_place`
    for :func:`resample`: this rank's parents and global ancestor indices, its own
    offspring first (with placeholders up to its share), and on the last rank the
    reference's row last (its own ancestor, global slot ``N - 1``), and the
    :class:`PendingMove` for :func:`normalize_moving`."""
    n, size = particles.shape[0], distributed.world_size()
    counts, indices = _conditional_offspring(log_weights, generator, totals)
    pinned = indices.new_full((1,), n - 1) if distributed.rank() == size - 1 else None
    return _in_place(particles, indices, counts, conditional_shares(n, size), pinned)


def conditional_resample(particles: Tensor, log_weights: Tensor, generator: torch.Generator,
                         totals: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Conditional multinomial resampling (Andrieu, Doucet & Holenstein 2010) of a cloud
    spread over the ranks: this rank's new particles ``[n, d]`` and their ancestors'
    global indices ``[n]``.

    The particle at the last global slot ``N - 1`` (the last rank's last particle) is
    the frozen reference: it keeps its slot and is its own ancestor. The other ``N - 1``
    ancestors are i.i.d. draws from the global weights (the reference among the
    candidates), as conditional SMC in one process draws them: the counts per rank are
    ``Multinomial(N - 1, totals)`` (common draws from ``generator``), each rank draws its
    count from its own weights, and the surplus moves to the ranks in deficit
    (:func:`offspring` with :func:`conditional_shares`). ``log_weights`` ``[n]`` are
    normalized over all ranks; ``totals`` ``[W]`` (from :func:`normalize`) saves an
    all-gather.

    Example:
        >>> particles = torch.arange(4.0).unsqueeze(-1)  # a one-rank "world"
        >>> log_weights = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
        >>> new, ancestors = conditional_resample(particles, log_weights,
        ...                                       torch.Generator().manual_seed(0))
        >>> new.shape, int(ancestors[-1])  # the reference keeps the last slot
        (torch.Size([4, 1]), 3)
    """
    n, me, size = particles.shape[0], distributed.rank(), distributed.world_size()
    num = n * size
    counts, indices = _conditional_offspring(log_weights, generator, totals)
    new, ancestors = offspring(particles, indices, me * n, counts, conditional_shares(n, size))
    if me == size - 1:  # the reference stays in its slot
        new = torch.cat([new, particles[-1:]])
        ancestors = torch.cat([ancestors, ancestors.new_full((1,), num - 1)])
    return new, ancestors


# --- common randomness, global reductions, gathers ---------------------------------------


def _fingerprint(device: torch.device) -> str:
    digest = hashlib.sha1(torch.random.get_rng_state().numpy().tobytes())
    if device.type == "cuda":
        digest.update(torch.cuda.get_rng_state(device).numpy().tobytes())
    return digest.hexdigest()


def distinct_streams(device: torch.device | None = None) -> int:
    """Make sure the ranks' torch generators differ, and return a seed common to all
    ranks (drawn from rank 0's generator).

    When two ranks' generators are in the same state (``torchrun`` starts every process
    from torch's default seed), every rank reseeds its own with
    :func:`~posterity.infer.distributed.rank_seed` of the common seed, so that the ranks
    draw independent particles; ranks seeded apart are left alone. One small
    all-gather."""
    device = torch.device("cpu") if device is None else torch.device(device)
    candidate = int(torch.randint(2**62, (), dtype=torch.long))
    seen = distributed.all_gather_objects((_fingerprint(device), candidate))
    seed = seen[0][1]
    if len({fingerprint for fingerprint, _ in seen}) < len(seen):
        torch.manual_seed(distributed.rank_seed(seed))
    return seed


def shared_generator(device: torch.device | None = None) -> torch.Generator:
    """A CPU generator seeded identically on every rank, for the draws the ranks must
    agree on (after :func:`distinct_streams`)."""
    return torch.Generator().manual_seed(distinct_streams(device) ^ 0x5DEECE66D)


def _all_gather_stacked(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (the same shape everywhere) stacked in rank order:
    ``[W, ...]`` (one ``dist.all_gather``; ``[1, ...]`` in one process)."""
    if not distributed.is_initialized():
        return tensor.unsqueeze(0)
    pieces = [torch.empty_like(tensor) for _ in range(distributed.world_size())]
    dist.all_gather(pieces, tensor.contiguous())
    return torch.stack(pieces)


class Normalized(NamedTuple):
    """What :func:`normalize` and :func:`normalize_moving` return, the same on every rank
    except ``log_weights`` and ``rows``.

    Attributes:
        log_normalizer: ``log Σ_ranks Σ_i exp(·)`` of the unnormalized log-weights.
        log_weights: this rank's ``[n]``, normalized over all ranks.
        ess: the global effective sample size ``1 / Σ W_i²``.
        totals: every rank's share of the weight, ``[W]`` float64 on the CPU.
        moments: with ``particles`` given, ``[E[x], E[x²]]`` under the global weights,
            ``[2 d]`` float64; otherwise ``None``.
        rows: :func:`normalize_moving`'s moved particles and their ancestors, this
            rank's share after the move (empty for :func:`normalize`).
    """

    log_normalizer: Tensor
    log_weights: Tensor
    ess: float
    totals: Tensor
    moments: Tensor | None
    rows: tuple[Tensor, ...] = ()


def _summary(unnormalized: Tensor, kept: int, own: int, particles: Tensor | None,
             pinned: int = 0) -> tuple[Tensor, Tensor]:
    """This rank's part of the normalizing all-gather: its log-shift (the largest of its
    first ``own`` log-weights and its last ``pinned``, 0 when none is finite), the sum
    and the sum of squares of the shifted weights of its first ``kept`` rows and its last
    ``pinned``, and, with ``particles``, their weighted sums of ``x`` and ``x²``; float64
    ``[3 (+ 2 d)]``. Also the shift."""
    detached = unnormalized.detach()
    tail = detached[detached.shape[0] - pinned:]
    candidates = torch.cat([detached[:own], tail]) if pinned else detached[:own]
    local_max = candidates.max() if candidates.numel() else detached.new_tensor(-math.inf)
    shift = local_max if torch.isfinite(local_max) else local_max.new_zeros(())
    weights = (detached[:kept] - shift).exp()  # in (0, 1]: no overflow in float32
    x = None if particles is None else particles[:kept].detach()
    if pinned:  # the few pinned rows join the kept ones
        weights = torch.cat([weights, (tail - shift).exp()])
        if x is not None:
            x = torch.cat([x, particles[particles.shape[0] - pinned:].detach()])
    parts = [shift.double().reshape(1), weights.sum(dtype=torch.float64).reshape(1),
             (weights @ weights).double().reshape(1)]  # no [n] temporary for the ESS
    if x is not None:
        # in float64: E[x²] - E[x]² cancels badly for a mean large against the spread
        weights, x = weights.double(), x.double()
        parts += [weights @ x, weights @ x.square()]
    return torch.cat(parts), shift


def _combine(table: Tensor, dtype: torch.dtype, moved: Tensor | None = None,
             owners: Tensor | None = None, moved_states: Tensor | None = None
             ) -> tuple[Tensor, float, Tensor, Tensor | None]:
    """Every rank's :func:`_summary` ``[W, 3 (+ 2 d)]``, plus the log-weights ``[S]`` of
    the rows that move to rank ``owners`` ``[S]`` (and their states ``[S, d]``), ->
    the log-normalizer, the ESS, the totals per rank after the move and the moments."""
    shifts, sums, squares = table[:, 0], table[:, 1], table[:, 2]
    top = shifts.max()
    scale = (shifts - top).exp()
    per_rank, per_square = sums * scale, squares * scale.square()
    moments = scale @ table[:, 3:] if table.shape[1] > 3 else None
    if moved is not None and moved.numel():
        weights = (moved - top).exp()
        per_rank = per_rank.index_add(0, owners, weights)
        per_square = per_square.index_add(0, owners, weights.square())
        if moments is not None:
            states = moved_states.to(weights.dtype)
            moments = moments + torch.cat([weights @ states, weights @ states.square()])
    total = per_rank.sum()
    log_normalizer = (total.log() + top).to(dtype)
    ess = float(total.square() / per_square.sum())
    return (log_normalizer, ess, (per_rank / total).cpu(),
            None if moments is None else moments / total)


def normalize(unnormalized: Tensor, particles: Tensor | None = None) -> Normalized:
    """This rank's unnormalized log-weights ``[n]`` -> the global log-normalizer, the
    log-weights normalized over all ranks, the global ESS and every rank's share of the
    weight (:class:`Normalized`), from one all-gather of three float64 per rank (and,
    with this rank's ``particles`` ``[n, d]``, ``2 d`` more for the filtering moments);
    every rank computes the same numbers. A rank without a finite weight contributes
    nothing; NaN or +Inf anywhere gives NaN (as in one process)."""
    n = unnormalized.shape[0]
    summary, _ = _summary(unnormalized, n, n, particles)
    log_normalizer, ess, totals, moments = _combine(_all_gather_stacked(summary),
                                                    unnormalized.dtype)
    return Normalized(log_normalizer, unnormalized - log_normalizer, ess, totals, moments)


def _writable(tensor: Tensor) -> Tensor:
    # rows are written in place; a transition may return an expanded view or an alias
    return tensor if tensor.is_contiguous() and tensor._base is None else tensor.clone()


def normalize_moving(unnormalized: Tensor, particles: Tensor, ancestors: Tensor,
                     pending: PendingMove, moments: bool = False) -> Normalized:
    """:func:`normalize` for a step that followed :func:`resample_in_place`, moving the
    surplus rows in the same all-gather.

    ``unnormalized`` ``[m]``, ``particles`` ``[m, d]`` and ``ancestors`` ``[m]`` are
    every row this rank propagated, ``m = max(own, n) + pinned``. Each rank publishes its
    log-shift, the sums of its kept rows and its surplus rows (log-weight, state and
    ancestor, as float64, padded to the largest surplus); from that every rank computes
    the same weight totals per rank *after* the move (and, with ``moments``, the
    filtering moments). Returns :class:`Normalized` for this rank's ``n`` rows, with
    ``rows`` its ``n`` particles and ancestors, the received ones in place of the
    placeholders."""
    own, pinned, me = pending.own, pending.pinned, distributed.rank()
    n = int(pending.sizes[me])  # offspring rows after the move (then the pinned ones)
    send, receive, offsets = transfer_plan(pending.counts, pending.sizes)
    summary, _ = _summary(unnormalized, min(own, n), own, particles if moments else None,
                          pinned)
    columns = [unnormalized, particles, ancestors]
    widths = [math.prod(t.shape[1:]) for t in columns]
    width, most = sum(widths), int(send.max())
    table = summary.new_zeros((most, width))
    if own > n:
        torch.cat([t[n:own].detach().reshape(own - n, w).double()
                   for t, w in zip(columns, widths)], 1, out=table[:own - n])
    gathered = _all_gather_stacked(torch.cat([summary, table.flatten()]))
    head = summary.shape[0]
    blocks = gathered[:, head:].reshape(gathered.shape[0], most, width)
    sent = torch.cat([block[:int(s)] for block, s in zip(blocks, send)])
    owners = torch.repeat_interleave(torch.arange(send.shape[0], device=sent.device),
                                     receive.to(sent.device))
    moved, states, _ = sent.split(widths, 1)
    log_normalizer, ess, totals, first_moments = _combine(
        gathered[:, :head], unnormalized.dtype, moved[:, 0], owners, states)
    if own < n:
        start = int(offsets[me])
        received = sent[start:start + int(receive[me])].split(widths, 1)
        columns = [_writable(t) for t in columns]
        for t, column in zip(columns, received):
            t[own:n] = column.reshape((n - own,) + t.shape[1:])
    elif pinned and own > n:  # the pinned rows follow the surplus, sent already: close up
        columns = [_writable(t) for t in columns]
        for t in columns:
            t[n:n + pinned] = t[t.shape[0] - pinned:].clone()
    unnormalized, particles, ancestors = (t[:n + pinned] for t in columns)
    return Normalized(log_normalizer, unnormalized - log_normalizer, ess, totals,
                      first_moments, (particles, ancestors))


def _gather_plain(tensor: Tensor) -> Tensor:
    return _all_gather_stacked(tensor).flatten(0, 1)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        return _gather_plain(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = distributed.rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (``[n, ...]``, the same shape on every rank) in rank
    order: ``[W n, ...]``. Differentiable: the gradient of a rank's block is the sum
    over ranks of the gradients of that block, so that ranks whose objectives add up to
    one global objective get, summed over ranks, its gradient. The identity in one
    process."""
    if not distributed.is_initialized():
        return tensor
    return _GatherRows.apply(tensor) if tensor.requires_grad else _gather_plain(tensor)
