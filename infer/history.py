"""The record of a training run: every logged quantity per update and per epoch."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """Every logged quantity: ``steps[name]`` per update, ``epochs[name]`` per epoch.

    ``out_of_time`` says that the latest :func:`fit` call stopped on its time budget;
    it belongs to that call and is not carried into a resumed run. When that call
    stopped inside an epoch, ``partial`` holds where (the loop's position and the names
    the partial epoch's record logged): the record is kept for the caller, and the next
    call on the same history drops it and finishes the epoch from there.
    """

    steps: dict[str, list[float]] = field(default_factory=dict)
    epochs: dict[str, list[float]] = field(default_factory=dict)
    stopped_early: bool = False
    best_epoch: int | None = None
    out_of_time: bool = False
    partial: dict[str, Any] | None = None

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

    def __repr__(self) -> str:
        """One line: the counts and the last epoch's values, not every logged number.

        Example:
            >>> history = History()
            >>> history.log_step({"loss": 2.5})
            >>> history.log_epoch({"epoch": 1, "train_loss": 2.5})
            >>> history
            History(epochs=1, steps=1, last epoch: epoch=1, train_loss=2.5)
        """
        # columns logged every epoch (validation may run every few)
        last = ", ".join(f"{name}={values[-1]:.6g}" for name, values in self.epochs.items()
                         if values and len(values) == self.num_epochs)
        flags = [name for name in ("stopped_early", "out_of_time") if getattr(self, name)]
        flags += [f"best_epoch={self.best_epoch}"] if self.best_epoch is not None else []
        steps = len(next(iter(self.steps.values()), []))
        return (f"History(epochs={self.num_epochs}, steps={steps}"
                + (f", last epoch: {last}" if last else "")
                + "".join(f", {flag}" for flag in flags) + ")")

    @property
    def num_epochs(self) -> int:
        return len(self.epochs.get("epoch", []))

    def to_inference_data(self) -> Any:
        """The history as ``InferenceData`` with one ``training_history`` group."""
        from .inference_data import history_inference_data

        return history_inference_data(self)

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> History:
        return cls(**copy.deepcopy(state))


