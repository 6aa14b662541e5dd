"""Parameter learning for state-space models by score ascent (Cardoso et al. 2023, §4).

Fisher's identity writes the score as a smoothed additive functional:
``∇θ log p_θ(y) = E[Σ_t ∇θ log(q_θ(x_t | x_{t-1}) g_θ(y_t | x_t)) | y]``. PaRIS (or
PPG) statistics of the log-density terms, computed with autograd on while particles,
weights and backward indices stay detached, are a function of θ whose gradient is
exactly the PaRIS (or PPG) estimate of that score. Any torch optimizer then climbs it.

* ``estimator="paris"``: a fresh smoother at every step (stochastic-gradient MLE).
* ``estimator="ppg"``: one conditional SMC sweep per step whose reference path persists
  across parameter updates: Markov score climbing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from posterity.models.ssm import StateSpaceModel

from ..checks import check_choice, check_int, check_positive
from ..train import NonFiniteError
from .backward import backward_sampler
from .filter import FilterStep, ParticleFilter
from .paris import paris_update
from .particle_gibbs import ParticleGibbs, conditional_steps
from .ppg import path_through_backward_indices


def complete_data_log_density(ssm: StateSpaceModel):
    """``h_t = log q_θ(x_t | x_{t-1}) + log g_θ(y_t | x_t)`` (``log μ_θ(x_0)`` at 0)."""

    def h(x_prev: Tensor | None, x: Tensor, y: Tensor, t: int) -> Tensor:
        log_prior = (ssm.initial().log_prob(x) if x_prev is None
                     else ssm.transition_log_prob(x_prev, x, t))
        return (log_prior + ssm.observation_log_prob(x, y, t)).unsqueeze(-1)

    return h


def smoothed_objective(steps: Iterator[FilterStep], h, backward, num_backward: int
                       ) -> tuple[Tensor, list[Tensor], list[Tensor | None], Tensor]:
    """PaRIS statistics of ``h`` with gradients through ``h`` only.

    Returns the scalar objective (its gradient is the score estimate), the particles and
    backward indices of every step (for PPG's next path) and the final weights.
    """
    statistics, particles, indices, last = None, [], [], None
    while True:
        with torch.no_grad():  # the particles, weights and indices carry no gradient
            step = next(steps, None)
        if step is None:
            break
        statistics, backward_indices = paris_update(step, statistics, h, backward,
                                                    num_backward)
        particles.append(step.particles)
        indices.append(backward_indices)
        last = step
    weights = last.log_weights.detach().exp()
    return (weights @ statistics).squeeze(-1), particles, indices, weights


@dataclass
class LearningResult:
    """``history[name]``: the value of each parameter (flattened) after every step,
    ``[num_steps, size]``; ``objective``: the smoothed log-density at every step."""

    history: dict[str, Tensor] = field(default_factory=dict)
    objective: list[float] = field(default_factory=list)

    def to_inference_data(self):
        """A ``learning_history`` group: the objective and every parameter per step."""
        import arviz as az
        import numpy as np
        import xarray as xr

        data = {"objective": ("step", np.asarray(self.objective))}
        for name, values in self.history.items():
            data[name] = (("step", f"{name}_dim"), values.cpu().numpy())
        return az.InferenceData(learning_history=xr.Dataset(
            data, coords={"step": np.arange(1, len(self.objective) + 1)}))


class ScoreAscent:
    """Maximum likelihood (PaRIS) or Markov score climbing (PPG) for a state-space model.

    Args:
        ssm: the model; all its ``nn.Parameter`` s are learned.
        estimator: ``"paris"`` or ``"ppg"``.
        num_particles: ``N >= 2``.
        lr: learning rate of the default Adam optimizer.
        optimizer: a ``torch.optim`` class or ``params -> Optimizer`` factory.
        scheduler: an ``optimizer -> LRScheduler`` factory, stepped every update.
        num_backward: ``Ñ`` backward draws per particle.
        backward: ``"auto"``, ``"exact"`` or ``"rejection"``.
        missing: treat NaN in ``ys`` as missing observations.
        progress: show a ``tqdm`` bar.
    """

    def __init__(
        self,
        ssm: StateSpaceModel,
        estimator: str = "paris",
        num_particles: int = 100,
        lr: float = 1e-2,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        num_backward: int = 2,
        backward: str = "auto",
        missing: bool = False,
        progress: bool = True,
    ) -> None:
        self.ssm = ssm
        self.estimator = check_choice("estimator", estimator, ("paris", "ppg"))
        self.num_particles = check_int("num_particles", num_particles, 2)
        self.num_backward = check_int("num_backward", num_backward, 1)
        params = [p for p in ssm.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameters to learn")
        self.optimizer = (optimizer or torch.optim.Adam)(params, lr=check_positive("lr", lr))
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else None
        self.backward = backward_sampler(ssm, backward)
        self.h = complete_data_log_density(ssm)
        self.missing, self.progress = bool(missing), progress
        self.reference: Tensor | None = None
        self.num_steps = 0

    def objective(self, ys: Tensor) -> Tensor:
        """A scalar whose gradient in the parameters is the score estimate; for PPG it
        also moves the conditional path."""
        if self.estimator == "paris":
            steps = ParticleFilter(self.ssm, self.num_particles, ess_threshold=1.0,
                                   missing=self.missing, progress=False).steps(ys)
            return smoothed_objective(steps, self.h, self.backward, self.num_backward)[0]
        if self.reference is None:
            with torch.no_grad():
                self.reference = ParticleGibbs(self.ssm, self.num_particles, progress=False,
                                               backward="exact",
                                               missing=self.missing).initial_path(ys)
        steps = conditional_steps(self.ssm, ys, self.reference, self.num_particles)
        value, particles, indices, weights = smoothed_objective(
            steps, self.h, self.backward, self.num_backward)
        with torch.no_grad():
            self.reference = path_through_backward_indices(particles, indices, weights)
        return value

    def score(self, ys: Tensor) -> dict[str, Tensor]:
        """One estimate of ``∇θ log p_θ(y)`` for every parameter."""
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        params = dict(self.ssm.named_parameters())
        grads = torch.autograd.grad(self.objective(ys), list(params.values()),
                                    allow_unused=True)
        return {name: torch.zeros_like(p) if g is None else g
                for (name, p), g in zip(params.items(), grads)}

    def step(self, ys: Tensor) -> dict[str, float]:
        """One ascent step on the score estimate."""
        value = self.objective(ys)
        if not torch.isfinite(value):
            raise NonFiniteError(f"the smoothed log-density became {float(value)} at step "
                                 f"{self.num_steps}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        (-value).backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.num_steps += 1
        return {"objective": float(value.detach())}

    def fit(self, ys: Tensor, num_steps: int = 500) -> LearningResult:
        ys = self.ssm.check_observations(ys, allow_missing=self.missing)
        check_int("num_steps", num_steps, 1)
        result = LearningResult()
        history: dict[str, list[Tensor]] = {n: [] for n, _ in self.ssm.named_parameters()}
        for _ in tqdm(range(num_steps), disable=not self.progress, desc="ScoreAscent",
                      leave=False):
            result.objective.append(self.step(ys)["objective"])
            for name, p in self.ssm.named_parameters():
                history[name].append(p.detach().flatten().clone())
        result.history = {n: torch.stack(v) for n, v in history.items()}
        return result
