"""Stochastic-gradient MCMC kernels for any Pyro model that subsamples its data plate.

Each kernel is a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel`, so
``pyro.infer.MCMC`` gives chains, progress bars and ``arviz.from_pyro``. They move in
the unconstrained space of the model's latent sites, with the minibatch potential
``U`` of :mod:`.potential`. With step size ``ε`` and temperature ``T``:

* :class:`SGLD` (Welling & Teh 2011, eq. 4):
  ``θ ← θ - (ε/2) ∇U(θ) + N(0, ε T)``.
* :class:`PreconditionedSGLD` (Li et al. 2016, algorithm 1): with the RMSprop
  average ``V ← α V + (1 - α) ∇U²`` and ``G = 1 / (λ + sqrt(V))``,
  ``θ ← θ - (ε/2) G ∇U(θ) + N(0, ε T G)``. The correction term ``Γ(θ) = Σ_j ∂G/∂θ_j``
  is dropped, as the paper does in its experiments: ``G`` changes slowly when ``α`` is
  close to 1, and ``Γ`` costs a second derivative per step. This leaves a bias of order
  ``(1 - α)`` that the tests on Gaussian targets bound.
* :class:`SGHMC` (Chen et al. 2014, eq. 15 with ``β̂ = 0``): the Euler step ``h``
  of ``dθ = v dt``, ``dv = -∇U dt - α v dt + sqrt(2 α T) dW``, whose stationary law is
  ``exp(-U/T)``: ``v ← v - h ∇U(θ) - h α v + N(0, 2 α h T)``, ``θ ← θ + h v``. Here
  ``step_size`` is the time step ``h`` (Chen et al.'s ``η = h²``) and ``friction`` the
  rate ``α``, as in ``posteriors``.

Every kernel takes a step size (float or :mod:`.schedules` schedule), a temperature
(``T < 1``: a colder, tempered posterior) and ``thin``: each returned sample is
``thin`` updates after the previous one, so memory stays bounded on long runs. During
the exploration stage of a cyclical schedule (Zhang et al. 2020) the kernels take
noise-free optimization steps and those updates never produce samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from torch import Tensor

from ..checks import check_int, check_positive
from ..train import NonFiniteError
from .potential import Potential
from .schedules import StepSize, as_schedule

Params = dict[str, Tensor]


class SGMCMCKernel(MCMCKernel):
    """Shared machinery: setup from a trace, thinning, schedules and temperature.

    Subclasses implement :meth:`init_state` and :meth:`update`.

    Args:
        model: a Pyro program whose data plate subsamples
            (``pyro.plate("data", N, subsample_size=B)``).
        step_size: ``ε``, a float or a schedule.
        temperature: ``T``; the chain targets ``p(θ | D)^(1/T)``.
        thin: updates per returned sample.
        require_subsample: refuse a model with no subsampled plate (a full-batch model
            would make the kernel an unadjusted Langevin sampler; pass ``False`` to
            allow it).
        initial_params: unconstrained starting values (default: a draw from the prior).
    """

    def __init__(
        self,
        model: Callable,
        step_size: StepSize,
        temperature: float = 1.0,
        thin: int = 1,
        require_subsample: bool = True,
        initial_params: Params | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a Pyro program, got {type(model).__name__}")
        self.model = model
        self.schedule = as_schedule(step_size)
        self.temperature = check_positive("temperature", temperature)
        self.thin = check_int("thin", thin, 1)
        self.require_subsample = bool(require_subsample)
        self.transforms: dict[str, Any] | None = None
        self.potential: Potential | None = None
        self._initial_params = initial_params
        self.num_steps = 0
        self.state: dict[str, Any] = {}
        self._last_potential = float("nan")

    # --- MCMCKernel protocol ---------------------------------------------------------
    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        self.potential = Potential(self.model, args, kwargs)
        if self.require_subsample and not self.potential.plates:
            raise ValueError(
                f"{type(self).__name__} needs a model whose data plate subsamples, e.g. "
                "pyro.plate('data', N, subsample_size=B); this model has none (pass "
                "require_subsample=False to run full-batch Langevin dynamics)"
            )
        self.transforms = self.potential.transforms
        if self._initial_params is None:
            self._initial_params = self.potential.prior_draw()
        self.num_steps = 0
        self.state = self.init_state(self._initial_params)

    @property
    def initial_params(self) -> Params:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: Params) -> None:
        self._initial_params = params

    def sample(self, params: Params) -> Params:
        """``thin`` sampling-stage updates (plus any exploration updates in between)."""
        taken = 0
        while taken < self.thin:
            exploring = self.schedule.is_exploration(self.num_steps)
            params = self.step(params, self.schedule(self.num_steps), exploring)
            self.num_steps += 1
            taken += not exploring
        return params

    def logging(self) -> dict[str, float]:
        return {"step_size": self.schedule(max(self.num_steps - 1, 0)),
                "potential": self._last_potential}

    def diagnostics(self) -> dict[str, float]:
        return {"num_steps": self.num_steps}

    # --- the update --------------------------------------------------------------------
    def gradient(self, params: Params) -> Params:
        value, grads = self.potential.value_and_grad(params)
        self._last_potential = float(value)
        if not math.isfinite(self._last_potential):
            raise NonFiniteError(
                f"the potential became {self._last_potential} at update {self.num_steps} "
                f"(step size {self.schedule(self.num_steps):.3g}); lower the step size"
            )
        return grads

    def step(self, params: Params, step_size: float, exploring: bool) -> Params:
        """One update: the subclass's rule on the gradient at ``params``."""
        return self.update(params, self.gradient(params), step_size, exploring)

    def init_state(self, params: Params) -> dict[str, Any]:
        return {}

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        raise NotImplementedError

    def noise_like(self, value: Tensor, variance: float | Tensor) -> Tensor:
        return torch.randn_like(value) * (variance**0.5 if isinstance(variance, float)
                                          else variance.sqrt())

    def step_indices(self, num_samples: int) -> list[int]:
        """The update index that produced each of ``num_samples`` returned samples."""
        indices, t = [], 0
        while len(indices) < num_samples:
            taken = 0
            while taken < self.thin:
                taken += not self.schedule.is_exploration(t)
                t += 1
            indices.append(t - 1)
        return indices


class SGLD(SGMCMCKernel):
    """Stochastic gradient Langevin dynamics (Welling & Teh, ICML 2011).

    Example:
        >>> import pyro, torch
        >>> from pyro.infer import MCMC
        >>> from posterity.models import BayesianLogisticRegression
        >>> X, y = torch.randn(200, 3), torch.randint(0, 2, (200,)).float()
        >>> model = BayesianLogisticRegression(3, subsample_size=20)
        >>> mcmc = MCMC(SGLD(model, step_size=1e-3), num_samples=50, warmup_steps=10,
        ...             disable_progbar=True)
        >>> mcmc.run(X, y)
        >>> mcmc.get_samples()["weight"].shape
        torch.Size([50, 3])
    """

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        new = {}
        for name, value in params.items():
            drift = value - 0.5 * step_size * grads[name]
            new[name] = drift if exploring else drift + self.noise_like(
                value, step_size * self.temperature
            )
        return new


class PreconditionedSGLD(SGMCMCKernel):
    """SGLD with an RMSprop preconditioner (Li, Chen, Carlson & Carin, AAAI 2016).

    Args:
        alpha: the decay ``α`` of the squared-gradient average.
        eps: the ``λ`` that keeps ``G`` bounded.
        (others as :class:`SGMCMCKernel`)
    """

    def __init__(self, model: Callable, step_size: StepSize, alpha: float = 0.99,
                 eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(model, step_size, **kwargs)
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.eps = check_positive("eps", eps)

    def init_state(self, params: Params) -> dict[str, Any]:
        return {"square_avg": {n: torch.zeros_like(v) for n, v in params.items()},
                "updates": 0}

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        square_avg = self.state["square_avg"]
        self.state["updates"] += 1
        # the first update starts V at g² rather than at (1 - α) g² (no bias towards 0)
        alpha = self.alpha if self.state["updates"] > 1 else 0.0
        new = {}
        for name, value in params.items():
            grad = grads[name]
            square_avg[name].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            precond = 1.0 / (self.eps + square_avg[name].sqrt())
            drift = value - 0.5 * step_size * precond * grad
            new[name] = drift if exploring else drift + self.noise_like(
                value, step_size * self.temperature * precond
            )
        return new


class SGHMC(SGMCMCKernel):
    """Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin, ICML 2014).

    Args:
        friction: ``α``, the friction rate; each update loses a fraction ``h α`` of
            the momentum, so ``h α < 1`` is needed.
        (others as :class:`SGMCMCKernel`; ``step_size`` is the time step ``h``)

    Example:
        >>> from posterity.infer.sgmcmc import CyclicalSchedule
        >>> kernel = SGHMC(lambda X, y: None, step_size=CyclicalSchedule(1e-3, 4, 8000, 0.25),
        ...                friction=0.1)
        >>> kernel.friction
        0.1
    """

    def __init__(self, model: Callable, step_size: StepSize, friction: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(model, step_size, **kwargs)
        self.friction = check_positive("friction", friction)
        if self.schedule.initial * self.friction >= 1:
            raise ValueError(
                f"step_size * friction must be < 1 (the momentum kept per update is "
                f"1 - h α), got {self.schedule.initial} * {self.friction}"
            )

    def init_state(self, params: Params) -> dict[str, Any]:
        return {"momentum": {n: torch.zeros_like(v) for n, v in params.items()}}

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        momentum = self.state["momentum"]
        keep = 1 - step_size * self.friction
        new = {}
        for name, value in params.items():
            velocity = keep * momentum[name] - step_size * grads[name]
            if not exploring:
                velocity = velocity + self.noise_like(
                    value, 2 * self.friction * step_size * self.temperature
                )
            momentum[name] = velocity
            new[name] = value + step_size * velocity
        return new


pSGLD = PreconditionedSGLD  # noqa: N816 (the name Li et al. 2016 use)

__all__ = ["SGLD", "SGHMC", "PreconditionedSGLD", "SGMCMCKernel", "pSGLD"]
