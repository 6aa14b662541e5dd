"""The one training loop that every gradient-trained engine shares.

An engine plugs in by providing

* ``step(batch) -> dict[str, float]``: one update on a minibatch, returning the
  logged quantities (``"loss"`` first);
* ``validate(data) -> dict[str, float]``: validation metrics, one of which is named
  by the engine's ``monitor = (name, "max" | "min")``;
* ``state_dict()`` / ``load_state_dict(state)``: modules and optimizer state.

:func:`fit` adds epochs and shuffled minibatches, a history of every quantity, early
stopping, a ``tqdm`` progress bar, a NaN/Inf guard and exact checkpoint/resume.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyro
import torch
from torch import Tensor
from tqdm import tqdm

from .checks import check_int


class NonFiniteError(FloatingPointError):
    """Training produced NaN or Inf; the message names the step and the quantity."""


class Trainable(Protocol):
    monitor: tuple[str, str]

    def step(self, batch: Tensor) -> dict[str, float]: ...

    def validate(self, data: Tensor) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class History:
    """Every logged quantity: ``steps[name]`` per update, ``epochs[name]`` per epoch."""

    steps: dict[str, list[float]] = field(default_factory=dict)
    epochs: dict[str, list[float]] = field(default_factory=dict)
    stopped_early: bool = False
    best_epoch: int | None = None
    out_of_time: bool = False

    def log_step(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.steps.setdefault(name, []).append(float(value))

    def log_epoch(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.epochs.setdefault(name, []).append(float(value))

    def __getitem__(self, name: str) -> list[float]:
        if name in self.epochs:
            return self.epochs[name]
        return self.steps[name]

    def __contains__(self, name: str) -> bool:
        return name in self.epochs or name in self.steps

    @property
    def num_epochs(self) -> int:
        return len(self.epochs.get("epoch", []))

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> History:
        return cls(**copy.deepcopy(state))


def _rng_state() -> dict[str, Any]:
    state = {"pyro": pyro.util.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    pyro.util.set_rng_state(state["pyro"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _num_rows(data: Tensor | tuple[Tensor, ...]) -> int:
    return (data[0] if isinstance(data, tuple) else data).shape[0]


def _take(data: Tensor | tuple[Tensor, ...], index: Tensor) -> Any:
    if isinstance(data, tuple):
        return tuple(t[index.to(t.device)] for t in data)
    return data[index.to(data.device)]


def _guard(metrics: dict[str, float], epoch: int, step: int) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(
                f"{name} became {value} at epoch {epoch}, step {step} (global update "
                f"count); lower the learning rate, clip gradients, or check the data"
            )


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
    progress: bool = True,
    history: History | None = None,
    time_budget: float | None = None,
) -> History:
    """Train ``engine`` for ``epochs`` passes over ``data`` in shuffled minibatches.

    Args:
        engine: an object with ``step``, ``validate``, ``monitor`` and state dicts.
        data: ``[N, ...]`` tensor, or a tuple of tensors sharing their first dimension.
        epochs: total number of epochs (a resumed run counts the ones already done).
        batch_size: rows per update; the last minibatch of an epoch may be smaller.
        valid: validation data; evaluated every ``valid_every`` epochs.
        patience: stop after this many validations without improvement of
            ``engine.monitor``; ``None`` never stops early.
        restore_best: with early stopping, restore the best parameters at the end.
        checkpoint: file to save the full state to (modules, optimizer, RNG, shuffling
            generator, history) every ``checkpoint_every`` epochs.
        resume: if ``checkpoint`` exists, continue from it exactly as an uninterrupted
            run would.
        seed: seeds Pyro/PyTorch and the shuffling at the start of a fresh run.
        progress: show a ``tqdm`` bar with the current objective.
        history: a history to extend (the engine's own, across ``fit`` calls).
        time_budget: stop once the updates (not validation) have taken this many
            seconds in all; the interrupted epoch is validated and logged. For comparing
            engines at equal wall-clock time.

    Returns:
        The :class:`History`.

    Raises:
        NonFiniteError: when a logged quantity becomes NaN or Inf.
    """
    check_int("epochs", epochs, 0)
    check_int("batch_size", batch_size, 1)
    check_int("valid_every", valid_every, 1)
    check_int("checkpoint_every", checkpoint_every, 1)
    if patience is not None:
        check_int("patience", patience, 1)
    num_rows = _num_rows(data)
    monitor, mode = engine.monitor
    sign = 1.0 if mode == "max" else -1.0

    history = history if history is not None else History()
    shuffle = torch.Generator()
    stopping = {"best": -math.inf, "bad": 0, "best_state": None}
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None and resume and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        engine.load_state_dict(saved["engine"])
        history = History.from_state_dict(saved["history"])
        stopping = saved["stopping"]
        shuffle.set_state(saved["shuffle"])
        _set_rng_state(saved["rng"])
    else:
        if seed is not None:
            pyro.set_rng_seed(seed)
        shuffle.manual_seed(int(torch.randint(2**62, ()).item()) if seed is None else seed)

    start_epoch = history.num_epochs
    steps_per_epoch = math.ceil(num_rows / batch_size)
    total_step = len(next(iter(history.steps.values()), []))
    bar = tqdm(
        total=steps_per_epoch * max(epochs - start_epoch, 0),
        disable=not progress,
        desc=type(engine).__name__,
        leave=False,
        dynamic_ncols=True,
    )
    shown: dict[str, str] = {}  # the progress bar's postfix: latest step and validation values
    trained_seconds = sum(history.epochs.get("seconds", []))
    try:
        for epoch in range(start_epoch, epochs):
            if history.stopped_early or history.out_of_time:
                break
            started = time.perf_counter()
            sums: dict[str, float] = {}
            order = torch.randperm(num_rows, generator=shuffle)
            for begin in range(0, num_rows, batch_size):
                metrics = engine.step(_take(data, order[begin : begin + batch_size]))
                total_step += 1
                _guard(metrics, epoch, total_step)
                history.log_step(metrics)
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0.0) + value
                bar.update()
                shown.update({k: f"{v:.4g}" for k, v in metrics.items()})
                bar.set_postfix(shown, refresh=False)
                if time_budget is not None and \
                        trained_seconds + time.perf_counter() - started >= time_budget:
                    history.out_of_time = True
                    break
            record = {"epoch": epoch + 1, "seconds": time.perf_counter() - started}
            trained_seconds += record["seconds"]
            steps_done = math.ceil(min(begin + batch_size, num_rows) / batch_size)
            record.update({f"train_{k}": v / steps_done for k, v in sums.items()})
            if valid is not None and (epoch + 1) % valid_every == 0:
                valid_metrics = engine.validate(valid)
                _guard(valid_metrics, epoch, total_step)
                record.update(valid_metrics)
                score = sign * valid_metrics[monitor]
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
            if checkpoint is not None and (
                (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs or history.stopped_early
                or history.out_of_time
            ):
                _save(checkpoint, engine, history, stopping, shuffle)
    finally:
        bar.close()
    if history.stopped_early and restore_best and stopping["best_state"] is not None:
        engine.load_state_dict(stopping["best_state"])
    return history


def _save(
    path: Path, engine: Trainable, history: History, stopping: dict, shuffle: torch.Generator
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(
        {
            "engine": engine.state_dict(),
            "history": history.state_dict(),
            "stopping": stopping,
            "shuffle": shuffle.get_state(),
            "rng": _rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)  # atomic: a crash mid-save leaves the previous checkpoint
