"""What the amortized engines (:class:`AmortizedVI`, :class:`WakeSleep`) share: a model
and guide trained by one optimizer through the shared loop, with exact state dicts."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .. import train
from ..checks import check_int


class AmortizedEngine:
    """Mixin: ``fit`` through :func:`posterity.infer.fit`, state dicts and the
    settings that checkpoints store (:meth:`config`).

    Subclasses set ``model``, ``guide``, ``optimizer``, ``scheduler``, ``history`` and
    ``num_steps``, and implement ``prepare``, ``step``, ``validate`` and ``monitor``.
    They put their settings (objective, particles, sizes, ...) in ``self._config``.
    A subclass that sets ``_scheduler_pending = True`` gets a cosine schedule whose
    length :meth:`fit` computes: the updates of the first call's ``epochs``. A later
    call (or a resumed run) that trains past that length stretches the rest of the
    decay to end with it; once the schedule has ended, a further call warns, because
    PyTorch's cosine then rises again.
    """

    _config: dict[str, Any]

    model: nn.Module
    guide: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: train.History
    num_steps: int

    def prepare(self, x: Tensor, name: str = "data") -> Tensor:
        raise NotImplementedError

    def parameters(self) -> list[nn.Parameter]:
        """The parameters of the model and the guide, each once."""
        seen: dict[int, nn.Parameter] = {}
        for module in (self.model, self.guide):
            for p in module.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def config(self) -> dict[str, Any]:
        """The settings that define this engine's training, as plain values: the model
        and guide classes, the optimizer, its learning rates and what the subclass put in
        ``self._config``. :func:`~posterity.infer.fit` stores them in checkpoints
        and refuses to resume with different ones.

        Example:
            >>> import torch
            >>> from posterity.guides import GaussianEncoder
            >>> from posterity.infer import AmortizedVI
            >>> from posterity.models import VAE
            >>> vi = AmortizedVI(VAE(4, 2, (8,)), GaussianEncoder(4, 2, (8,)), lr=1e-3)
            >>> settings = AmortizedEngine.config(vi)  # what a subclass may extend
            >>> {k: settings[k] for k in ("model", "guide", "optimizer", "lr")}
            {'model': 'VAE', 'guide': 'GaussianEncoder', 'optimizer': 'Adam', 'lr': 0.001}
        """
        lrs = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]
        settings: dict[str, Any] = {
            "model": type(self.model).__name__,
            "guide": type(self.guide).__name__,
            "optimizer": type(self.optimizer).__name__,
            "lr": lrs[0] if len(lrs) == 1 else lrs,
            "scheduler": type(self.scheduler).__name__ if self.scheduler is not None else None,
        }
        settings.update(getattr(self, "_config", {}))
        return settings

    def fit(self, data: Tensor, epochs: int, batch_size: int = 100,
            valid: Tensor | None = None, **kwargs: Any) -> train.History:
        """Train on ``data`` (``[N, D]``); see :func:`posterity.infer.fit`.

        ``epochs`` is the run's total over every call on this engine: a second call with
        the same ``epochs`` trains nothing (pass more to continue).

        Keyword arguments (``patience``, ``checkpoint``, ``resume``, ``seed``,
        ``progress``, ``time_budget``, ``config``, ...) go to the shared training loop.
        On SIGINT/SIGTERM (:class:`~posterity.infer.train.Interrupted`) the history so
        far is kept in ``self.history``.
        """
        if getattr(self, "_scheduler_pending", False):
            self._start_cosine(data, epochs, batch_size)
        elif getattr(self, "_cosine_from_fit", False) and isinstance(data, Tensor):
            self._stretch_cosine(epochs * math.ceil(data.shape[0] / max(batch_size, 1)))
        data = self.prepare(data, "data")
        if valid is not None:
            valid = self.prepare(valid, "valid")
        try:
            self.history = train.fit(self, data, epochs=epochs, batch_size=batch_size,
                                     valid=valid, history=self.history, **kwargs)
        except train.Interrupted as stop:
            self.history = stop.history
            raise
        return self.history

    def _start_cosine(self, data: Tensor, epochs: int, batch_size: int) -> None:
        """A ``"cosine"`` schedule whose length was left open gets it from the run:
        ``epochs * ceil(N / batch_size)`` updates (the epochs of this call, a resumed
        one included)."""
        check_int("epochs", epochs, 1)
        check_int("batch_size", batch_size, 1)
        if not isinstance(data, Tensor):
            raise TypeError(f"data must be a torch.Tensor, got {type(data).__name__}")
        self._planned_steps = epochs * math.ceil(data.shape[0] / batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self._planned_steps)
        self._scheduler_pending = False
        self._cosine_from_fit = True

    def _stretch_cosine(self, total: int) -> None:
        """Make the cosine that :meth:`fit` started end after ``total`` updates instead,
        continuing from the current learning rate (PyTorch's cosine is computed step by
        step from the last rate, so the rest of the decay stretches smoothly)."""
        scheduler = self.scheduler
        if total <= scheduler.T_max:
            return
        if scheduler.last_epoch >= scheduler.T_max:
            warnings.warn(
                f"the cosine learning-rate schedule ended after {scheduler.T_max} updates "
                f"(the first fit call); this call trains to update {total}, where "
                "PyTorch's cosine rises again as in a warm restart. To decay over the whole "
                "run, train all epochs in one call (or resume with the same epochs), or "
                "train without a schedule (scheduler=None)",
                stacklevel=3)
            return
        scheduler.T_max = total

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_steps": self.num_steps,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.guide.load_state_dict(state["guide"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_steps = state.get("num_steps", 0)
        if self.scheduler is not None and state.get("scheduler") is not None:
            planned = getattr(self, "_planned_steps", None)
            self.scheduler.load_state_dict(state["scheduler"])
            if planned is not None:  # resumed with more epochs than the first run asked
                self._stretch_cosine(planned)
