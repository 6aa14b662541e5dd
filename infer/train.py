"""The one training loop that every gradient-trained engine shares, and the optimizer
set-up they share.

An engine plugs in by meeting :class:`~posterity.infer.protocols.Trainable`:

* ``step(batch) -> dict[str, float]``: one update on a minibatch, returning the
  logged quantities (``"loss"`` first);
* ``validate(data) -> dict[str, float]``: validation metrics, one of which is named
  by the engine's ``monitor = (name, "max" | "min")``;
* ``state_dict()`` / ``load_state_dict(state)``: modules and optimizer state;
* optionally ``config()``: its settings, stored in checkpoints and checked on resume.

:func:`fit` adds epochs and shuffled minibatches, a history of every quantity, early
stopping, a progress bar, a NaN/Inf guard, a time budget, exact checkpoint/resume
(:mod:`posterity.infer.checkpoints`) and a clean stop on SIGINT/SIGTERM.
:func:`make_optimizer` and :func:`optimizer_step` build and step the optimizers of the
gradient engines (VI, wake-sleep, score ascent) in one way.

Under a process group (:mod:`posterity.infer.distributed`, launched by ``torchrun``)
the same call trains data-parallel: every global minibatch is split over the ranks,
each rank draws its own particles, :func:`optimizer_step` sums the row-weighted
gradients over the ranks, and the history, validation, early stopping, checkpoints
and stop decisions are the same on every rank (see :func:`fit`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import re
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pyro
import torch
from torch import Tensor

from . import checkpoints, distributed
from .checkpoints import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
)
from .checks import check_choice, check_int, check_positive, user_stacklevel
from .history import History
from .optim import OptimizerSpec, SchedulerSpec, make_optimizer, optimizer_step
from .progress import progress_bar
from .protocols import Trainable

__all__ = [
    "CheckpointError",
    "OptimizerSpec",
    "SchedulerSpec",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "History",
    "Interrupted",
    "NonFiniteError",
    "Trainable",
    "fit",
    "make_optimizer",
    "optimizer_step",
]

_T = TypeVar("_T")


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf, or an update drove a distribution's parameter out of
    its support (NaN, Inf, an overflow or an underflow: a scale ``exp(s)`` that reached
    0); the message names the step and the quantity."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped :func:`fit` after an update (and a checkpoint).

    Attributes: ``history`` (the run so far), ``epoch`` (1-based), ``step`` (global
    update count), ``checkpoint`` (the path written, or ``None``) and ``signal`` (its
    name). Rerunning the same call resumes exactly where it stopped.
    """

    def __init__(self, message: str, *, history: History, epoch: int, step: int,
                 checkpoint: Path | None, signal: str):
        super().__init__(message)
        self.history, self.epoch, self.step = history, epoch, step
        self.checkpoint, self.signal = checkpoint, signal

    def __str__(self) -> str:
        return str(self.args[0])


def _num_rows(data: Tensor | tuple[Tensor, ...]) -> int:
    return (data[0] if isinstance(data, tuple) else data).shape[0]


def _take(data: Tensor | tuple[Tensor, ...], index: Tensor) -> Any:
    if isinstance(data, tuple):
        return tuple(t[index.to(t.device)] for t in data)
    return data[index.to(data.device)]


def _guard(metrics: dict[str, float], epoch: int, step: int) -> None:
    """``epoch``: 0-based, as the loop counts; messages count from 1, as the history."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(
                f"{name} became {value} at epoch {epoch + 1}, step {step} (global update "
                f"count); lower the learning rate, clip gradients, or check the data"
            )


def _diverged(error: ValueError, epoch: int, step: int) -> NonFiniteError | None:
    """A ``NonFiniteError`` when, at an update after the first, PyTorch's argument
    validation found a distribution's parameter out of its support (it raises a
    ``ValueError``), else ``None``: at the first update the same error is a bug of the
    model, and a value out of support (``Expected value argument``) is the data's or
    the model's, not a divergence. ``epoch``: 0-based."""
    text = " ".join(str(error).split())
    parameter = re.search(r"Expected parameter (\w+)", text)
    if step <= 1 or parameter is None or "found invalid values" not in text:
        return None
    family = re.search(r"of distribution (\w+)", text)
    what = f"the {parameter.group(1)} of a {family.group(1) if family else 'distribution'}"
    constraint = re.search(r"constraint (.+?), but found", text)
    where = f" {constraint.group(1)}" if constraint else " its support"
    found = text.split("found invalid values", 1)[1].lower()
    if "nan" in found or "inf" in found:
        cause = ("NaN, Inf, an overflow or an underflow; lower the learning rate, clip "
                 "gradients, or check the data")
    else:  # finite values at or beyond the bound
        cause = ("an update took a parameter to or past its bound (a scale that "
                 "underflowed to 0 or went below it, a probability above 1); lower the "
                 "learning rate, clip gradients, or keep a raw parameter inside with a "
                 "constraint, e.g. PyroParam(value, constraint=constraints.positive)")
    return NonFiniteError(
        f"{what} left{where} at epoch {epoch + 1}, step {step} (global update count): "
        f"{cause}")


class _Signals:
    """Defers SIGINT and SIGTERM while active: the loop polls ``received`` after each
    update. A second signal stops at once. Handlers are installed in the main thread
    only (Python delivers signals there) and restored on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()


def _settings(engine: Any, config: Mapping[str, Any] | None, loop: dict[str, Any]
              ) -> dict[str, Any]:
    """The flat settings a checkpoint stores: the loop's, the caller's ``config`` and
    ``engine.config()`` (prefixed ``engine.``)."""
    settings = {**loop, **dict(config or {})}
    engine_config = engine.config() if callable(getattr(engine, "config", None)) else {}
    if not isinstance(engine_config, Mapping):
        raise TypeError(f"{type(engine).__name__}.config() must return a dict, got "
                        f"{type(engine_config).__name__}")
    settings.update({f"engine.{k}": v for k, v in engine_config.items()})
    return checkpoints.plain_settings(settings)


# --- agreement between ranks (each the plain call in one process) -----------------------
def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to be raised on the other ranks), else a
    :class:`~posterity.infer.distributed.DistributedError` carrying its message."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 (any pickling failure)
        return distributed.DistributedError(f"rank 0 failed: {type(error).__name__}: {error}")


def _on_main(action: Callable[[], _T]) -> _T:
    """``action()`` run on rank 0 only; its result, or the exception it raised, reaches
    every rank, so that a failure there (a locked or corrupt checkpoint, a full disk)
    stops all ranks with the same error instead of leaving them waiting."""
    if not distributed.is_initialized():
        return action()
    outcome: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if distributed.is_main():
        try:
            outcome = (True, action())
        except Exception as caught:  # noqa: BLE001 (re-raised on every rank below)
            error = caught
            outcome = (False, _portable(caught))
    ok, value = distributed.broadcast_object(outcome)
    if not ok:
        raise error if error is not None else value
    return value


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _agree_values(metrics: dict[str, float], weight: float | None, out_of_time: bool,
                  received: int | None) -> Tensor:
    """What the ranks sum after an update: the row-weighted step metrics (when ``weight``
    is this rank's share; none when ``None``), then the time and signal flags."""
    values = [float(metrics[n]) * weight for n in metrics] if weight is not None else []
    values += [float(out_of_time)] + [float(received == s) for s in _SIGNALS]
    return torch.tensor(values, dtype=torch.float64)


def _read_agreement(metrics: dict[str, float], weight: float | None,
                    total: list[float]) -> tuple[dict[str, float], bool, int | None]:
    if weight is not None:
        metrics = dict(zip(metrics, total[: len(metrics)]))
    flags = total[len(total) - 1 - len(_SIGNALS):]
    seen = [s for s, count in zip(_SIGNALS, flags[1:]) if count > 0]
    return metrics, flags[0] > 0, (seen[-1] if seen else None)


_Agreed = tuple[dict[str, float], bool, "int | None", int]  # metrics, out of time, signal, step


class _Agreement:
    """The ranks' agreement after every update: the global step metrics (the row-weighted
    sum of every rank's, when a rank took a share of the minibatch), whether any rank ran
    out of time, and the signal any rank received (SIGTERM before SIGINT), so that all
    ranks log the same and stop at the same update.

    Under a process group the small all-reduce of update k runs while update k + 1
    computes and is read after it (a blocking one cost about 1 ms per update, most of
    it waiting for the other rank's core to wake): every rank reads the same values at
    the same update, and a stop (time budget, signal) takes effect one update later
    than in one process. In one process the values are this update's own.
    """

    def __init__(self) -> None:
        self._pending: tuple[Any, Tensor, dict[str, float], float | None, int] | None = None

    def submit(self, metrics: dict[str, float], weight: float | None, out_of_time: bool,
               received: int | None, step: int) -> list[_Agreed]:
        """Start the agreement on update ``step``; return those that are ready."""
        if not distributed.is_initialized():
            return [(metrics, out_of_time, received, step)]
        ready = self.flush()
        values = _agree_values(metrics, weight, out_of_time, received)
        self._pending = (distributed.all_reduce_sum_async(values), values, metrics, weight,
                         step)
        return ready

    def flush(self) -> list[_Agreed]:
        """Wait for the agreement still running, if any, and return it."""
        if self._pending is None:
            return []
        work, values, metrics, weight, step = self._pending
        self._pending = None
        distributed.wait(work)
        return [(*_read_agreement(metrics, weight, values.tolist()), step)]


def _agree_epoch(seconds: float, received: int | None) -> tuple[float, int | None]:
    """At the end of an epoch: its duration on the slowest rank, and the signal any
    rank received (so that the history and the stop decision agree)."""
    if not distributed.is_initialized():
        return seconds, received
    values = torch.tensor([seconds] + [float(received == s) for s in _SIGNALS],
                          dtype=torch.float64)
    total = distributed.all_reduce_max(values).tolist()
    seen = [s for s, flag in zip(_SIGNALS, total[1:]) if flag > 0]
    return total[0], (seen[-1] if seen else None)


def _check_parallel(engine: Any, num_rows: int, batch_size: int,
                    call: dict[str, Any]) -> bool:
    """Whether ``engine`` splits minibatches over the ranks; checks that it can and that
    every rank was called alike."""
    size = distributed.world_size()
    split = bool(getattr(engine, "data_parallel", True))
    if split and batch_size < size:
        raise ValueError(
            f"batch_size is the global minibatch, split over the {size} processes, so it "
            f"must be >= {size} (one row per process at least), got {batch_size}")
    last = num_rows % batch_size
    if split and 0 < last < size:
        raise ValueError(
            f"batch_size {batch_size} leaves a last minibatch of {last} rows per epoch "
            f"({num_rows} rows), fewer than the {size} processes; choose a batch_size "
            f"for which N % batch_size is 0 or >= {size}")
    calls = distributed.all_gather_objects({"rows": num_rows, "batch_size": batch_size,
                                            **call})
    differ = sorted({k for c in calls for k, v in c.items() if v != calls[0][k]})
    if differ:
        hint = ("; pass the whole data set on every rank (fit takes each rank's share of "
                "every global minibatch itself): do not shard it" if "data" in differ else "")
        raise ValueError(
            "every rank must call fit alike (the collectives of the loop depend on it); "
            + ", ".join(f"{k} by rank: {[c[k] for c in calls]}" for k in differ) + hint)
    return split


def _fingerprint(data: Tensor | tuple[Tensor, ...]) -> list[float]:
    """A cheap summary that tells apart the data sets of ranks passing shards: the sum of
    about 1024 evenly spaced rows of each tensor (the row count is compared too)."""
    tensors = data if isinstance(data, tuple) else (data,)
    return [float(torch.nansum(t.detach()[:: max(1, len(t) // 1024)], dtype=torch.float64))
            for t in tensors]


def _digest(data: Tensor | tuple[Tensor, ...]) -> str:
    """A checkpoint's record of its data: a hash of the bytes of about 1024 evenly spaced
    rows of each tensor, with their shapes and dtypes (exact, unlike a floating sum, and
    blind to thread counts), so that a run resumed on other data is refused."""
    digest = hashlib.sha256()
    for t in data if isinstance(data, tuple) else (data,):
        rows = t.detach()[:: max(1, len(t) // 1024)].contiguous().cpu()
        digest.update(f"{tuple(t.shape)} {t.dtype}".encode())
        digest.update(rows.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def fit(
    engine: Trainable,
    data: Tensor | tuple[Tensor, ...],
    *,
    epochs: int,
    batch_size: int,
    valid: Tensor | None = None,
    valid_every: int = 1,
    patience: int | None = None,
    restore_best: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = True,
    seed: int | None = None,
    progress: bool | None = None,
    history: History | None = None,
    time_budget: float | None = None,
    config: Mapping[str, Any] | None = None,
    safe_keys: Iterable[str] = (),
) -> History:
    """Train ``engine`` for ``epochs`` passes over ``data`` in shuffled minibatches.

    Args:
        engine: a :class:`~posterity.infer.protocols.Trainable`; if it also has
            ``config()`` (:class:`~posterity.infer.protocols.Configurable`), its
            settings are stored in the checkpoint and checked on resume.
        data: ``[N, ...]`` tensor, or a tuple of tensors sharing their first dimension.
            Under a process group every rank passes the same data.
        epochs: total number of epochs (a resumed run counts the ones already done).
        batch_size: rows per update; the last minibatch of an epoch may be smaller.
            Under a process group it is the global minibatch: see "More than one
            process" below.
        valid: validation data; evaluated every ``valid_every`` epochs.
        patience: stop after this many validations without improvement of
            ``engine.monitor``; ``None`` never stops early. Needs ``valid``.
        restore_best: with early stopping, restore the best parameters at the end.
        checkpoint: file to save the full state to (modules, optimizer, RNG, shuffling
            generator, history, settings) every ``checkpoint_every`` epochs, and on
            SIGINT/SIGTERM. Loaded with ``weights_only=True``. A lock file
            ``<checkpoint>.lock`` keeps a second run off it.
        resume: if ``checkpoint`` exists, continue from it exactly as an uninterrupted
            run would. ``False`` starts over and overwrites it.
        seed: seeds Pyro/PyTorch and the shuffling at the start of a fresh run (a
            resumed run restores its generators: ``None`` keeps the run's seed, and another
            seed than the run's is refused). Under a
            process group the shuffling uses ``seed`` on every rank and Pyro/PyTorch
            :func:`~posterity.infer.distributed.rank_seed` (``seed`` itself on rank 0);
            ``None`` takes a seed drawn by rank 0.
        progress: show a ``tqdm`` bar with the current objective; ``None`` follows
            :mod:`posterity.infer.progress` (shown on an interactive terminal only).
        history: a history to extend (the engine's own, across ``fit`` calls).
        time_budget: stop this call once its updates (not validation) have taken this
            many seconds; an interrupted epoch is validated and logged (its validation
            does not count for early stopping) and the checkpoint keeps the position
            inside it, so that a resumed run, or a later call on the same history,
            finishes that epoch as an uninterrupted run would. The budget belongs to the
            call: a resumed run gets its own.
        config: the run's settings (e.g. the command line's), plain values. Stored in
            the checkpoint with the loop's own settings (``batch_size``, ``seed``, the
            number of rows, ...) and ``engine.config()``. On resume a difference in
            one of :data:`~posterity.infer.checkpoints.SAFE_KEYS` or ``safe_keys`` is
            applied and reported by a warning; any other difference raises
            :class:`CheckpointMismatchError`.
        safe_keys: further setting names that may change on resume.

    More than one process: under a process group
    (:func:`~posterity.infer.distributed.init_process_group`, launched by ``torchrun``)
    every rank calls ``fit`` alike and the call trains data-parallel:

    * All ranks shuffle in the same order and take their contiguous share
      (:func:`~posterity.infer.distributed.share`) of every global minibatch of
      ``batch_size`` rows, drawing their own particles. ``engine.step`` runs inside
      :func:`~posterity.infer.distributed.gradient_weight` ``(n_rank / n_batch)`` and
      :func:`optimizer_step` sums the weighted gradients over the ranks: for a loss
      that is a mean over the local rows (every posterity engine's), that is the
      gradient of the global minibatch, and every rank takes the same step. When the
      world size does not divide the minibatch, the shares differ by one row and are
      weighted by their rows, so the update is still the single-process one (e.g.
      7 rows on 2 ranks: 4 and 3, weights 4/7 and 3/7). ``batch_size`` must be at least
      the world size, and so must a smaller last minibatch (``N % batch_size``),
      else a ValueError. An engine whose class sets ``data_parallel = False`` (its loss
      on each rank is already that rank's part of one global estimate) gets the whole
      minibatch on every rank and weight 1.
    * Every rank starts a fresh run from rank 0's weights. The logged step metrics are
      the row-weighted sums of the ranks' (the global minibatch's means), so the
      history is the same on every rank; an epoch's ``seconds`` is the slowest
      rank's. Validation runs on rank 0 and its metrics reach every rank, so early
      stopping decides alike (an engine with ``data_parallel = False`` validates on
      every rank, in case its ``validate`` is collective; rank 0's values are kept).
      The other ranks wait in a collective meanwhile, so one validation must take
      less than the process group's timeout (``POSTERITY_DIST_TIMEOUT``, 300 s).
    * Rank 0 alone holds the lock and writes the checkpoint, which holds every rank's
      generators: each rank restores its own, so a resumed run continues exactly
      like an uninterrupted one. A checkpoint may be resumed on another number of
      processes (a warning says so); the minibatches are the same, the ranks' draws
      are not those of an uninterrupted run.
    * The time budget and SIGINT/SIGTERM are agreed after every update (one
      all-reduce, with the metrics): all ranks stop after the same update, and a
      signal that reached one rank stops them all.

    Returns:
        The :class:`History`.

    Raises:
        ValueError: under a process group, ``batch_size`` (or the last minibatch)
            smaller than the world size, or ranks called with different data sizes or
            settings (``batch_size``, ``epochs``, ``seed``, with or without ``valid``
            or ``checkpoint``, ...).
        NonFiniteError: when a logged quantity becomes NaN or Inf.
        CheckpointError: the checkpoint is unreadable, corrupt or holds more than
            plain data; :class:`CheckpointMismatchError` when it was written with
            other settings; :class:`CheckpointLockedError` when another run holds it.
        Interrupted: on SIGINT or SIGTERM, after the current update and a checkpoint.
        OSError: the checkpoint cannot be written (one line naming the path).

    Example:
        >>> import torch
        >>> class Mean:  # fits the mean of the data by SGD
        ...     monitor = ("valid_loss", "min")
        ...     def __init__(self):
        ...         self.mu = torch.zeros(1, requires_grad=True)
        ...         self.optimizer, _ = make_optimizer([self.mu], "sgd", lr=0.5)
        ...     def step(self, batch):
        ...         loss = (batch - self.mu).pow(2).mean()
        ...         optimizer_step(self.optimizer, loss)
        ...         return {"loss": loss.item()}
        ...     def validate(self, data):
        ...         return {"valid_loss": (data - self.mu).pow(2).mean().item()}
        ...     def state_dict(self):
        ...         return {"mu": self.mu.detach().clone()}
        ...     def load_state_dict(self, state):
        ...         self.mu.data.copy_(state["mu"])
        >>> engine = Mean()
        >>> history = fit(engine, torch.full((8, 1), 3.0), epochs=5, batch_size=4, seed=0)
        >>> round(engine.mu.item(), 3), history.num_epochs
        (3.0, 5)
    """
    check_int("epochs", epochs, 0)
    check_int("batch_size", batch_size, 1)
    check_int("valid_every", valid_every, 1)
    check_int("checkpoint_every", checkpoint_every, 1)
    if patience is not None:
        check_int("patience", patience, 1)
        if valid is None:
            raise ValueError("patience stops a run whose validation stops improving: pass "
                             "valid= data too (or patience=None)")
    if time_budget is not None:
        check_positive("time_budget", time_budget)
    num_rows = _num_rows(data)
    if num_rows == 0:
        raise ValueError("data has no rows")
    monitor, mode = engine.monitor
    check_choice("engine.monitor[1]", mode, ("max", "min"))
    parallel = distributed.is_initialized()
    split = True
    if parallel:
        split = _check_parallel(engine, num_rows, batch_size, {
            "data": _fingerprint(data), "epochs": epochs, "seed": seed, "valid": valid is not None,
            "valid_every": valid_every, "patience": patience,
            "checkpoint": checkpoint is not None, "checkpoint_every": checkpoint_every,
            "resume": resume, "time_budget": time_budget is not None})
    path = Path(checkpoint) if checkpoint is not None else None
    settings = None
    if path is not None:
        loop_settings = {
            "engine": type(engine).__name__, "num_data": num_rows,
            "data_digest": _digest(data), "batch_size": batch_size,
            "seed": seed, "epochs": epochs, "patience": patience, "valid_every": valid_every,
            "restore_best": restore_best, "checkpoint_every": checkpoint_every,
            "time_budget": time_budget,
        }
        loop_settings["world_size"] = distributed.world_size()
        settings = _settings(engine, config, loop_settings)
    with contextlib.ExitStack() as stack:

        def lock() -> bool:  # rank 0 only: the lock file, and is there a run to resume?
            stack.enter_context(checkpoints.RunLock(path))
            checkpoints.remove_stale_temporaries(path)
            return resume and path.exists()

        found = path is not None and _on_main(lock)
        loop = _Loop(engine, data, path, settings, batch_size, history, split)
        if found:
            loop.resume(safe_keys, patience)
        elif parallel:
            if seed is None:  # rank 0 draws the run's seed; the shuffling must agree
                seed = _on_main(lambda: int(torch.randint(2**31 - 2**24, ()).item()))
            pyro.set_rng_seed(distributed.rank_seed(seed))
            loop.shuffle.manual_seed(seed)
            state = _on_main(engine.state_dict)  # every rank starts from rank 0's weights
            if not distributed.is_main():
                engine.load_state_dict(state)
        elif seed is not None:
            pyro.set_rng_seed(seed)
            loop.shuffle.manual_seed(seed)
        else:
            loop.shuffle.manual_seed(int(torch.randint(2**62, ()).item()))
        if not found:
            loop.continue_partial_epoch()
            done = loop.history.num_epochs
            # (a rerun from a checkpoint is quiet: it reports the run)
            if done >= epochs and distributed.is_main():
                warnings.warn(
                    f"fit(epochs={epochs}): {done} epochs are done already, and epochs is "
                    "the total, counting earlier calls: nothing to train (pass epochs > "
                    f"{done} to go on)", UserWarning, stacklevel=user_stacklevel())
        loop.run(epochs=epochs, valid=valid, valid_every=valid_every, patience=patience,
                 restore_best=restore_best, checkpoint_every=checkpoint_every,
                 progress=progress if distributed.is_main() else False,
                 time_budget=time_budget, monitor=monitor,
                 sign=1.0 if mode == "max" else -1.0)
    if loop.history.stopped_early and restore_best and loop.stopping["best_state"] is not None:
        engine.load_state_dict(loop.stopping["best_state"])
    return loop.history


class _Loop:
    """The state of one :func:`fit` call: history, early stopping, the shuffling
    generator and, after an interrupt, the position inside an epoch."""

    def __init__(self, engine: Trainable, data: Any, path: Path | None,
                 settings: dict[str, Any] | None, batch_size: int, history: History | None,
                 split: bool = True):
        self.engine, self.data, self.path, self.settings = engine, data, path, settings
        self.batch_size, self.split = batch_size, split
        self.history = history if history is not None else History()
        self.shuffle = torch.Generator()
        self.stopping: dict[str, Any] = {"best": -math.inf, "bad": 0, "best_state": None}
        self.position: dict[str, Any] | None = None

    def resume(self, safe_keys: Iterable[str], patience: int | None) -> None:
        saved = _on_main(lambda: checkpoints.load(self.path, required=_REQUIRED))
        if saved["format"] != _FORMAT:
            raise CheckpointError(
                f"checkpoint {self.path} has format {saved['format']!r}, this version reads "
                f"{_FORMAT}; pass resume=False (CLI: --fresh) to start over, or use another "
                "directory")
        try:
            before = json.loads(saved["settings"])
        except (TypeError, ValueError):
            raise CheckpointError(f"checkpoint {self.path} has unreadable settings; pass "
                                  "resume=False (CLI: --fresh) to start over") from None
        if self.settings is not None and self.settings.get("seed") is None:
            self.settings["seed"] = before.get("seed")  # no seed given: the run keeps its own
        notes = checkpoints.compare_settings(self.path, before, self.settings, safe_keys)
        if notes and distributed.is_main():
            warnings.warn(f"resuming {self.path} with " + ", ".join(notes), stacklevel=4)
        try:
            self.engine.load_state_dict(saved["engine"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            # load_state_dict puts the names and shapes on the lines after its first
            reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            reason = reason or type(error).__name__
            reason = reason if len(reason) <= 600 else reason[:600] + " ..."
            raise CheckpointMismatchError(
                f"checkpoint {self.path} does not fit this {type(self.engine).__name__} "
                f"({reason}); pass resume=False (CLI: --fresh) to start over, or use "
                "another directory") from error
        self.history = History.from_state_dict(saved["history"])
        self.history.out_of_time = False  # the budget belonged to the call that stopped
        self.stopping = saved["stopping"]
        self.history.stopped_early = patience is not None and self.stopping["bad"] >= patience
        self.shuffle.set_state(saved["shuffle"])
        self._restore_rng(saved)
        self.position = saved["position"]

    def _restore_rng(self, saved: dict[str, Any]) -> None:
        """Each rank restores its own generators; ranks that the checkpoint's run did not
        have (it ran on fewer processes) are seeded afresh from one seed of rank 0."""
        states = saved.get("rank_rng") or [saved["rng"]]
        if distributed.is_initialized() and len(states) < distributed.world_size():
            seed = _on_main(lambda: int(torch.randint(2**31 - 2**24, ()).item()))
            if distributed.rank() >= len(states):
                pyro.set_rng_seed(distributed.rank_seed(seed))
                return
        checkpoints.set_rng_state(states[distributed.rank()])

    def continue_partial_epoch(self) -> None:
        """A history whose last call stopped on its time budget inside an epoch (kept in
        memory, not resumed from a checkpoint): drop that epoch's partial record and
        start where it stopped. The budget belonged to that call."""
        self.history.out_of_time = False
        partial, self.history.partial = self.history.partial, None
        if partial is not None:
            for name in partial["logged"]:
                self.history.epochs[name].pop()
            self.position = partial["position"]

    def save(self, position: dict[str, Any] | None = None) -> None:
        """Write the checkpoint (rank 0) with every rank's generators (a collective)."""
        states = distributed.all_gather_objects(checkpoints.rng_state())

        def write() -> None:
            payload = {
                "format": _FORMAT,
                "settings": json.dumps(self.settings, sort_keys=True),
                "engine": self.engine.state_dict(),
                "history": self.history.state_dict(),
                "stopping": self.stopping,
                "shuffle": self.shuffle.get_state(),
                "rng": states[0],
                "position": position,
            }
            if len(states) > 1:
                payload["rank_rng"] = states
            checkpoints.save(self.path, payload)

        _on_main(write)

    def _step(self, rows: Tensor) -> tuple[dict[str, float], float | None]:
        """``engine.step`` on this rank's share of the global minibatch ``rows`` (all of it
        for an engine with ``data_parallel = False``); returns its metrics and the weight
        of its share (``None`` when it took the whole minibatch)."""
        if not distributed.is_initialized():
            return self.engine.step(_take(self.data, rows)), None
        if not self.split:
            with distributed.gradient_weight(1.0):
                return self.engine.step(_take(self.data, rows)), None
        mine = rows[distributed.share(len(rows))]
        weight = len(mine) / len(rows)
        with distributed.gradient_weight(weight):
            return self.engine.step(_take(self.data, mine)), weight

    def _validate(self, valid: Any) -> dict[str, float]:
        """Validation metrics, equal on every rank: computed by rank 0 for a data-parallel
        engine; by every rank for one with ``data_parallel = False`` (its ``validate``
        may be collective), rank 0's values kept."""
        if not distributed.is_initialized():
            return self.engine.validate(valid)
        if self.split:
            return _on_main(lambda: self.engine.validate(valid))
        return distributed.broadcast_object(self.engine.validate(valid))

    def run(self, *, epochs: int, valid: Any, valid_every: int, patience: int | None,
            restore_best: bool, checkpoint_every: int, progress: bool | None,
            time_budget: float | None, monitor: str, sign: float) -> None:
        engine, history, stopping = self.engine, self.history, self.stopping
        num_rows = _num_rows(self.data)
        steps_per_epoch = math.ceil(num_rows / self.batch_size)
        start_epoch = history.num_epochs
        total_step = len(next(iter(history.steps.values()), []))
        done_before = self.position["next_step"] if self.position else 0
        shown: dict[str, str] = {}  # the bar's postfix: latest step and validation values
        spent = 0.0  # seconds of updates in this call, for the time budget
        signals = _Signals()
        with signals, progress_bar(
            total=max(steps_per_epoch * (epochs - start_epoch) - done_before, 0),
            progress=progress, desc=type(engine).__name__,
        ) as bar:
            for epoch in range(start_epoch, epochs):
                if history.stopped_early or history.out_of_time:
                    break
                if self.position is not None:  # resuming inside an epoch
                    epoch_shuffle, first = self.position["shuffle"], self.position["next_step"]
                    sums, carried = dict(self.position["sums"]), self.position["seconds"]
                    self.shuffle.set_state(epoch_shuffle)
                    self.position = None
                else:
                    epoch_shuffle, first, sums, carried = self.shuffle.get_state(), 0, {}, 0.0
                started = time.perf_counter()
                order = torch.randperm(num_rows, generator=self.shuffle)
                done, partial = first, None
                agreement = _Agreement()
                for index in range(first, steps_per_epoch):
                    begin = index * self.batch_size
                    try:
                        metrics, weight = self._step(order[begin: begin + self.batch_size])
                    except ValueError as error:
                        diverged = _diverged(error, epoch, total_step + 1)
                        if diverged is None:
                            raise
                        raise diverged from error
                    total_step += 1
                    done = index + 1
                    out_of_time = time_budget is not None and \
                        spent + time.perf_counter() - started >= time_budget
                    out_of_time, stop = self._record(agreement.submit(
                        metrics, weight, out_of_time, signals.received, total_step),
                        epoch, sums, bar, shown)
                    if out_of_time or stop is not None:  # log the update still agreeing
                        self._record(agreement.flush(), epoch, sums, bar, shown)
                    if out_of_time:
                        history.out_of_time = True
                        if done < steps_per_epoch:
                            partial = {"next_step": done, "shuffle": epoch_shuffle,
                                       "sums": dict(sums),
                                       "seconds": carried + time.perf_counter() - started}
                        break
                    if stop is not None and done < steps_per_epoch:
                        position = {"next_step": done, "shuffle": epoch_shuffle, "sums": sums,
                                    "seconds": carried + time.perf_counter() - started}
                        self._interrupt(stop, epoch, total_step, position)
                if self._record(agreement.flush(), epoch, sums, bar, shown)[0]:
                    history.out_of_time = True
                elapsed = time.perf_counter() - started
                spent += elapsed
                seconds, stop = _agree_epoch(carried + elapsed, signals.received)
                record = {"epoch": epoch + 1, "seconds": seconds}
                record.update({f"train_{k}": v / done for k, v in sums.items()})
                if partial is not None:
                    if self.path is not None:  # as an interrupt does, before the report
                        self.save(partial)
                    self._report_partial_epoch(record, partial, valid, epoch, total_step)
                    if stop is not None:
                        self._interrupt(stop, epoch, total_step, None,
                                        saved=self.path is not None)
                    break
                if valid is not None and (epoch + 1) % valid_every == 0:
                    valid_metrics = self._validate(valid)
                    _guard(valid_metrics, epoch, total_step)
                    if monitor not in valid_metrics:
                        raise KeyError(f"{type(engine).__name__}.validate() returned "
                                       f"{sorted(valid_metrics)}, without {monitor!r} "
                                       "(the engine's monitor)")
                    record.update(valid_metrics)
                    score = sign * float(valid_metrics[monitor])
                    if score > stopping["best"]:
                        stopping.update(best=score, bad=0)
                        history.best_epoch = epoch + 1
                        if patience is not None and restore_best:
                            stopping["best_state"] = copy.deepcopy(engine.state_dict())
                    else:
                        stopping["bad"] += 1
                        if patience is not None and stopping["bad"] >= patience:
                            history.stopped_early = True
                    shown[monitor] = f"{valid_metrics[monitor]:.4g}"
                    bar.set_postfix(shown, refresh=True)
                history.log_epoch(record)
                if self.path is not None and (
                    (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs
                    or history.stopped_early or history.out_of_time or stop
                ):
                    self.save()
                if stop is not None:
                    self._interrupt(stop, epoch, total_step, None, saved=True)
            _, stop = _agree_epoch(0.0, signals.received)
            if stop is not None:  # arrived after the last check: still stop
                self._interrupt(stop, history.num_epochs - 1, total_step, None, saved=True)

    def _report_partial_epoch(self, record: dict[str, float], position: dict[str, Any],
                              valid: Any, epoch: int, step: int) -> None:
        """Log the epoch a time budget cut short, validated for the caller, without
        touching what the rest of the run depends on: the generators (restored after
        the validation) and early stopping."""
        if valid is not None:
            state = checkpoints.rng_state()
            valid_metrics = self._validate(valid)
            checkpoints.set_rng_state(state)
            _guard(valid_metrics, epoch, step)
            record.update(valid_metrics)
        self.history.log_epoch(record)
        self.history.partial = {"position": position, "logged": list(record)}

    def _record(self, agreed: list[_Agreed], epoch: int, sums: dict[str, float], bar: Any,
                shown: dict[str, str]) -> tuple[bool, int | None]:
        """Log agreed updates; return whether one ran out of time, and a signal seen."""
        out, stop = False, None
        for metrics, out_of_time, received, step in agreed:
            _guard(metrics, epoch, step)
            self.history.log_step(metrics)
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.update()
            shown.update({k: f"{v:.4g}" for k, v in metrics.items()})
            bar.set_postfix(shown, refresh=False)
            out, stop = out or out_of_time, stop if received is None else received
        return out, stop

    def _interrupt(self, signum: int, epoch: int, step: int, position: dict[str, Any] | None,
                   saved: bool = False) -> None:
        if self.path is not None and not saved:
            self.save(position)
        name = signal.Signals(signum).name
        where = f"{type(self.engine).__name__} stopped by {name} at epoch {epoch + 1}, step {step}"
        if self.path is not None:
            message = f"{where}; checkpoint written to {self.path}; rerun to resume"
        else:
            message = f"{where}; no checkpoint was written (pass checkpoint= to resume later)"
        raise Interrupted(message, history=self.history, epoch=epoch + 1, step=step,
                          checkpoint=self.path, signal=name)


_FORMAT = 2
_REQUIRED = ("format", "settings", "engine", "history", "stopping", "shuffle", "rng",
             "position")
