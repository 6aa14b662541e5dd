"""Parameter learning for state-space models by score ascent (Cardoso et al. 2023, §4).

Fisher's identity writes the score as a smoothed additive functional:
``∇θ log p_θ(y) = E[Σ_t ∇θ log(q_θ(x_t | x_{t-1}) g_θ(y_t | x_t)) | y]``. PaRIS (or
PPG) statistics of the log-density terms, computed with autograd on while particles,
weights and backward indices stay detached, are a function of θ whose gradient is
exactly the PaRIS (or PPG) estimate of that score. Any torch optimizer then climbs it.

* ``estimator="paris"``: a fresh smoother at every update (stochastic-gradient MLE).
* ``estimator="ppg"``: conditional SMC sweeps whose reference path persists across
  parameter updates: Markov score climbing. Each update first runs ``burn_in`` sweeps
  that only move the path, then averages the score of ``sweeps_per_update`` sweeps.

Training goes through the shared loop :func:`posterity.infer.fit`: the series is
one row and one epoch is one update, so checkpoints, exact resume, the NaN guard, the
history, the time budget and the progress bar are those of every gradient engine.

**Across ranks** (inside a process group; ``data_parallel = False``: every rank sees the
whole series and the ranks' gradients are summed with weight 1):

* ``"paris"``: the ``num_particles`` are spread over the ranks (divisible by the number
  of processes); each rank's objective is its part ``Σ_{i on this rank} W_i τ_i`` of the
  one global PaRIS estimate, the statistics cross ranks through a differentiable
  all-gather, and the summed gradient is the global PaRIS score estimate, as in one
  process with the same ``N``.
* ``"ppg"`` with ``parallel="particles"`` (the default): one PPG chain whose sweeps
  spread the ``num_particles`` over the ranks (divisible by the number of processes,
  see :mod:`.ppg`); each rank's objective is its part of the sweep's global PaRIS
  estimate, as for ``"paris"``, and the reference path is the same on every rank.
* ``"ppg"`` with ``parallel="chains"``: every rank runs its own PPG chain with
  ``num_particles`` particles (its own random stream) and its objective is divided by
  the number of processes, so that the summed gradient is the mean of the chains'
  score estimates.

The reported objective (and :meth:`ScoreAscent.score`) is the global value on every
rank; :meth:`ScoreAscent.validate` runs a filter spread over the ranks (``num_particles``
in all, or per rank for PPG with ``parallel="chains"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from .. import distributed, train
from ..checks import check_choice, check_int, check_positive
from ..progress import progress_enabled
from ..train import NonFiniteError
from . import across_ranks as ranks
from .backward import backward_sampler
from .filter import FilterStep, ParticleFilter
from .paris import paris_update
from .particle_gibbs import ParticleGibbs, conditional_steps
from .ppg import (
    PARALLEL,
    conditional_steps_across_ranks,
    path_across_ranks,
    path_through_backward_indices,
)
from .protocol import validate_model


def complete_data_log_density(ssm: StateSpaceModel):
    """``h_t = log q_θ(x_t | x_{t-1}) + log g_θ(y_t | x_t)`` (``log μ_θ(x_0)`` at 0)."""

    def h(x_prev: Tensor | None, x: Tensor, y: Tensor, t: int) -> Tensor:
        log_prior = (ssm.initial().log_prob(x) if x_prev is None
                     else ssm.transition_log_prob(x_prev, x, t))
        return (log_prior + ssm.observation_log_prob(x, y, t)).unsqueeze(-1)

    return h


def smoothed_objective(steps: Iterator[FilterStep], h, backward, num_backward: int,
                       across_ranks: bool = False
                       ) -> tuple[Tensor, list[Tensor], list[Tensor | None], Tensor]:
    """PaRIS statistics of ``h`` with gradients through ``h`` only.

    Returns the scalar objective (its gradient is the score estimate), the particles and
    backward indices of every step (for PPG's next path) and the final weights. With
    ``across_ranks`` the steps are this rank's share of a filter spread over the ranks
    and the objective is this rank's part of the global estimate.
    """
    statistics, particles, indices, last = None, [], [], None
    while True:
        with torch.no_grad():  # the particles, weights and indices carry no gradient
            step = next(steps, None)
        if step is None:
            break
        statistics, backward_indices = paris_update(step, statistics, h, backward,
                                                    num_backward, check=False,
                                                    across_ranks=across_ranks)
        particles.append(step.particles)
        indices.append(backward_indices)
        last = step
    weights = last.log_weights.detach().exp()
    return (weights @ statistics).squeeze(-1), particles, indices, weights


@dataclass
class ScoreAscentResult:
    """What :meth:`ScoreAscent.fit` returns.

    Attributes:
        history: the value of each parameter (flattened) after every update,
            ``history[name]`` ``[num_steps, size]``.
        objective: the smoothed complete-data log-density at every update.
        training: the shared loop's :class:`~posterity.infer.History`.
        bound_violations: ``(t, excess)`` where a transition density exceeded
            ``transition_log_bound(t)`` (those steps used the exact backward kernel).
    """

    history: dict[str, Tensor] = field(default_factory=dict)
    objective: list[float] = field(default_factory=list)
    training: train.History = field(default_factory=train.History)
    bound_violations: list[tuple[int, float]] = field(default_factory=list)

    def to_inference_data(self):
        """A ``training_history`` group: the loop's history (``step_objective``, per
        epoch ``train_objective`` and ``seconds``) and every parameter per update, with
        dims ``(step, <name>_dim)``."""
        import arviz as az
        import numpy as np

        from ..inference_data import history_dataset

        dataset = history_dataset(self.training)
        steps = np.arange(1, len(self.objective) + 1)
        for name, values in self.history.items():
            dataset[name] = (("step", f"{name}_dim"), values.detach().cpu().numpy())
        dataset = dataset.assign_coords(step=steps)
        dataset.attrs["parameters"] = " ".join(self.history)
        dataset.attrs["bound_violations"] = len(self.bound_violations)
        return az.InferenceData(training_history=dataset)


LearningResult = ScoreAscentResult  # the 0.1 name


class ScoreAscent:
    """Maximum likelihood (PaRIS) or Markov score climbing (PPG) for a state-space model.

    Args:
        ssm: the model; all its ``nn.Parameter`` s with ``requires_grad`` are learned.
        estimator: ``"paris"`` or ``"ppg"``.
        num_particles: ``N >= 2``.
        lr: learning rate.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, a ``torch.optim`` class or
            a ``params -> Optimizer`` factory (see :func:`posterity.infer.optim.make_optimizer`).
        scheduler: ``None``, ``"cosine"`` (needs ``total_steps``) or an
            ``optimizer -> LRScheduler`` factory, stepped every update.
        total_steps: the number of updates, for ``scheduler="cosine"``.
        num_backward: ``Ñ`` backward draws per particle.
        backward: ``"auto"``, ``"exact"`` or ``"rejection"``.
        max_trials: proposals per accept-reject backward draw before the exact fallback.
        sweeps_per_update: estimates averaged per update (PPG: conditional SMC sweeps
            along the persisting path; PaRIS: independent smoothers).
        burn_in: PPG only: sweeps per update that move the path before the scored ones.
        parallel: PPG only, under a process group: ``"particles"`` (default) spreads the
            sweeps' ``num_particles`` over the ranks (one chain, the law of one process
            with the same ``N``, ``N`` beyond one device's memory); ``"chains"`` runs one
            chain per rank with all ``num_particles`` and averages their scores. PaRIS
            always spreads its particles. Outside a process group it changes nothing.
        missing: treat NaN in ``ys`` as missing observations.
        progress: a ``tqdm`` bar (``None``: on an interactive terminal only).

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> ssm = StochasticVolatility()
        >>> ys = ssm.simulate(T=20).observations
        >>> learner = ScoreAscent(ssm, "ppg", num_particles=20, sweeps_per_update=2,
        ...                       burn_in=1, progress=False)
        >>> result = learner.fit(ys, num_steps=3)
        >>> result.history["mu"].shape, list(result.to_inference_data().groups())
        (torch.Size([3, 1]), ['training_history'])
    """

    monitor = ("log_evidence", "max")
    #: each rank's objective is its part of one global estimate (see the module notes)
    data_parallel = False

    def __init__(
        self,
        ssm: StateSpaceModel,
        estimator: str = "paris",
        num_particles: int = 100,
        lr: float = 1e-2,
        optimizer: train.OptimizerSpec | None = None,
        scheduler: train.SchedulerSpec = None,
        num_backward: int = 2,
        backward: str = "auto",
        missing: bool = False,
        progress: bool | None = None,
        *,
        max_trials: int | None = None,
        sweeps_per_update: int = 1,
        burn_in: int = 0,
        total_steps: int | None = None,
        parallel: str = "particles",
    ) -> None:
        self.ssm = validate_model(ssm)
        self.estimator = check_choice("estimator", estimator, ("paris", "ppg"))
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.num_backward = check_int("num_backward", num_backward, 1)
        self.sweeps_per_update = check_int("sweeps_per_update", sweeps_per_update, 1)
        self.burn_in = check_int("burn_in", burn_in, 0)
        if self.burn_in and self.estimator != "ppg":
            raise ValueError("burn_in moves PPG's reference path; with estimator='paris' "
                             f"every update is a fresh smoother, got burn_in={burn_in}")
        self.parallel = check_choice("parallel", parallel, PARALLEL)
        if self.parallel == "chains" and self.estimator != "ppg":
            raise ValueError("parallel='chains' runs one PPG chain per process; "
                             "estimator='paris' always spreads its particles over the "
                             "processes, got parallel='chains'")
        params = [p for p in ssm.parameters() if p.requires_grad]
        if not params:
            raise ValueError("ssm has no parameters to learn (no nn.Parameter with "
                             "requires_grad)")
        self.lr = check_positive("lr", lr)
        self.optimizer, self.scheduler = train.make_optimizer(
            params, optimizer or "adam", lr=self.lr, scheduler=scheduler,
            total_steps=total_steps)
        self.backward_method = backward
        self.backward = backward_sampler(ssm, backward, max_trials, num_particles)
        self.max_trials = max_trials
        self.h = complete_data_log_density(ssm)
        self.missing, self.progress = bool(missing), progress
        # PaRIS spreads its particles over the ranks of a process group (PPG's sweeps
        # have their own steps, below)
        self.filter = ParticleFilter(ssm, num_particles, ess_threshold=1.0, missing=missing,
                                     progress=False,
                                     across_ranks=None if self.estimator == "paris" else False)
        self._spread_ppg()  # the divisibility error when the group exists already
        self.generator: torch.Generator | None = None  # the ranks' common draws (PPG)
        self.reference: Tensor | None = None
        self.num_steps = 0
        self.history = train.History()
        self.parameter_history: dict[str, list[Tensor]] = {
            n: [] for n, _ in ssm.named_parameters()}

    def config(self) -> dict[str, Any]:
        """The settings a checkpoint stores and checks on resume."""
        return {"model": type(self.ssm).__name__, "estimator": self.estimator,
                "num_particles": self.num_particles, "num_backward": self.num_backward,
                "backward": self.backward_method, "max_trials": self.max_trials,
                "sweeps_per_update": self.sweeps_per_update, "burn_in": self.burn_in,
                "lr": self.lr, "missing": self.missing}

    def _series(self, ys: Tensor) -> Tensor:
        """``ys`` checked, accepting the ``[1, T, obs_dim]`` row that ``train.fit`` hands
        over."""
        if isinstance(ys, Tensor) and ys.dim() == 3 and ys.shape[0] == 1:
            ys = ys[0]
        return self.ssm.check_observations(ys, allow_missing=self.missing)

    def _spread_ppg(self) -> bool:
        """Whether PPG's sweeps spread their particles over the ranks (a ``ValueError``
        when the number of processes does not divide ``num_particles`` then)."""
        if self.estimator != "ppg" or self.parallel != "particles" \
                or not distributed.is_initialized():
            return False
        distributed.check_divisible("num_particles", self.num_particles)
        return True

    def _sweep(self, ys: Tensor) -> Tensor:
        """One estimate: a scalar whose gradient in the parameters is the score
        estimate; for PPG it also moves the conditional path."""
        if self.estimator == "paris":
            return smoothed_objective(self.filter.steps(ys), self.h, self.backward,
                                      self.num_backward, self.filter.local_share()[0])[0]
        spread = self._spread_ppg()
        if self.reference is None:
            with torch.no_grad():
                if spread:  # the first path: an unconditional sweep spread over the ranks
                    self._ppg_sweep(ys, None, spread)
                else:
                    self.reference = ParticleGibbs(
                        self.ssm, self.num_particles, progress=False, backward="exact",
                        missing=self.missing).initial_path(ys)
        return self._ppg_sweep(ys, self.reference, spread)

    def _ppg_sweep(self, ys: Tensor, reference: Tensor | None, spread: bool) -> Tensor:
        """A conditional SMC sweep given ``reference`` with PaRIS statistics of the
        complete-data log-density; moves ``self.reference`` to the next path."""
        if spread:
            steps = conditional_steps_across_ranks(self.ssm, ys, reference,
                                                   self.num_particles, self.generator)
        else:
            steps = conditional_steps(self.ssm, ys, reference, self.num_particles)
        value, particles, indices, weights = smoothed_objective(
            steps, self.h, self.backward, self.num_backward, spread)
        with torch.no_grad():
            self.reference = (
                path_across_ranks(particles, indices, weights, self.generator) if spread
                else path_through_backward_indices(particles, indices, weights))
        return value

    def objective(self, ys: Tensor) -> Tensor:
        """The update's objective: ``burn_in`` path moves (PPG), then the mean of
        ``sweeps_per_update`` estimates. Inside a process group: this rank's part, the
        ranks' parts summing to the global objective (see the module notes); every rank
        must call it."""
        ys = self._series(ys)
        spread = self._spread_ppg()
        if self.estimator == "ppg":
            if spread:  # draws common to the ranks (and distinct particles on each)
                self.generator = ranks.shared_generator(ys.device)
            elif distributed.is_initialized():
                ranks.distinct_streams(ys.device)  # one chain per rank: distinct draws
            with torch.no_grad():
                for _ in range(self.burn_in):
                    self._sweep(ys)
        values = [self._sweep(ys) for _ in range(self.sweeps_per_update)]
        value = values[0] if len(values) == 1 else torch.stack(values).mean()
        if self.estimator == "ppg" and distributed.is_initialized() and not spread:
            value = value / distributed.world_size()  # the mean of the ranks' chains
        return value

    def score(self, ys: Tensor) -> dict[str, Tensor]:
        """One estimate of ``∇θ log p_θ(y)`` for every parameter (inside a process group:
        the global estimate, the same on every rank)."""
        params = dict(self.ssm.named_parameters())
        grads = torch.autograd.grad(self.objective(ys), list(params.values()),
                                    allow_unused=True)
        return {name: distributed.all_reduce_sum(torch.zeros_like(p) if g is None else g)
                for (name, p), g in zip(params.items(), grads)}

    def _check_parameters(self, when: str) -> None:
        bad = [name for name, p in self.ssm.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteError(f"model parameter(s) {', '.join(bad)} hold NaN or Inf {when}; "
                                 "lower the learning rate or clip gradients")

    def step(self, ys: Tensor) -> dict[str, float]:
        """One ascent update on the score estimate (``ys`` ``[T, obs_dim]``)."""
        self._check_parameters(f"before update {self.num_steps + 1}")
        value = self.objective(ys)
        total = distributed.all_reduce_sum(value.detach())  # every rank: the global value
        if not torch.isfinite(total):
            raise NonFiniteError(f"the smoothed log-density became {float(total)} at update "
                                 f"{self.num_steps + 1}; lower the learning rate")
        with distributed.gradient_weight(1.0):  # the ranks' parts sum to the estimate
            train.optimizer_step(self.optimizer, -value, self.scheduler)
        self._check_parameters(f"after update {self.num_steps + 1}")
        self.num_steps += 1
        for name, p in self.ssm.named_parameters():
            self.parameter_history[name].append(p.detach().flatten().clone())
        return {"objective": float(total)}

    @torch.no_grad()
    def validate(self, ys: Tensor) -> dict[str, float]:
        """``log Ẑ`` of a particle filter at the current parameters (inside a process
        group: spread over the ranks, ``num_particles`` in all, or per rank for PPG's
        chains; the same value on every rank)."""
        num = self.num_particles
        if self.estimator == "ppg" and self.parallel == "chains":
            num *= distributed.world_size()
        return {"log_evidence": float(ParticleFilter(
            self.ssm, num, missing=self.missing, progress=False)
            .run(self._series(ys)).log_evidence)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.ssm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "num_steps": self.num_steps,
            "reference": None if self.reference is None else self.reference.clone(),
            "parameter_history": {n: torch.stack(v) if v else torch.empty(0)
                                  for n, v in self.parameter_history.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ssm.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.num_steps = int(state["num_steps"])
        self.reference = state["reference"]
        self.parameter_history = {n: list(v.unbind(0)) if v.numel() else []
                                  for n, v in state["parameter_history"].items()}

    def fit(self, ys: Tensor, num_steps: int = 500, *,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 10,
            resume: bool = True, seed: int | None = None, progress: bool | None = None,
            time_budget: float | None = None, config: Mapping[str, Any] | None = None,
            safe_keys: Iterable[str] = ()) -> ScoreAscentResult:
        """Climb the score for ``num_steps`` updates in all (a resumed run, or a second
        call, counts the updates already done) through :func:`posterity.infer.fit`.

        Args:
            ys: observations ``[T, obs_dim]``.
            num_steps: total number of updates.
            checkpoint, checkpoint_every, resume, seed, time_budget: as in
                :func:`~posterity.infer.fit` (one epoch is one update).
            progress: overrides the engine's ``progress``.
            config, safe_keys: the run's settings stored in the checkpoint, and those
                that may change on resume (see :func:`~posterity.infer.fit`).
        """
        ys = self._series(ys)
        check_int("num_steps", num_steps, 1)
        violations = len(self.backward.bound_violations)
        show = progress_enabled(self.progress if progress is None else progress)
        self.history = train.fit(self, ys.unsqueeze(0), epochs=num_steps, batch_size=1,
                                 checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                 resume=resume, seed=seed, progress=show,
                                 history=self.history, time_budget=time_budget,
                                 config=config, safe_keys=safe_keys)
        return ScoreAscentResult(
            history={n: torch.stack(v) if v else torch.empty(0)
                     for n, v in self.parameter_history.items()},
            objective=list(self.history.steps.get("objective", [])),
            training=self.history,
            bound_violations=list(self.backward.bound_violations[violations:]))
