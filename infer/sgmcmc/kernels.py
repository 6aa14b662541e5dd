"""Stochastic-gradient MCMC kernels for any Pyro model that subsamples its data plate.

Each kernel is a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel`, so
``pyro.infer.MCMC`` gives chains, progress bars and ``arviz.from_pyro``. They move in
the unconstrained space of the model's latent sites, with the minibatch potential
``U`` of :mod:`.potential`. With step size ``ε`` and temperature ``T``:

* :class:`SGLD` (Welling & Teh 2011, eq. 4):
  ``θ ← θ - (ε/2) ∇U(θ) + N(0, ε T)``.
* :class:`PreconditionedSGLD` (Li et al. 2016, algorithm 1): with the per-datum mean
  gradient ``ḡ = ∇U / N`` (``N`` the size of the data plate), the RMSprop average
  ``V ← α V + (1 - α) ḡ²`` and ``G = 1 / (λ + sqrt(V))``,
  ``θ ← θ - (ε/2) G ∇U(θ) + N(0, ε T G)``. Building ``V`` from ``ḡ`` rather than from
  ``∇U`` is the paper's convention (and its code's), so its ε and λ carry over. The
  correction term ``Γ(θ) = Σ_j ∂G/∂θ_j`` is dropped, as the paper does in its
  experiments: ``G`` changes slowly when ``α`` is close to 1, and ``Γ`` costs a second
  derivative per step. This leaves a bias of order ``(1 - α)`` that the tests on
  Gaussian targets bound.
* :class:`SGHMC` (Chen et al. 2014, eq. 15 with ``β̂ = 0``): the Euler step ``h``
  of ``dθ = v dt``, ``dv = -∇U dt - α v dt + sqrt(2 α T) dW``, whose stationary law is
  ``exp(-U/T)``: ``v ← v - h ∇U(θ) - h α v + N(0, 2 α h T)``, ``θ ← θ + h v``. Here
  ``step_size`` is the time step ``h`` (Chen et al.'s ``η = h²``) and ``friction`` the
  rate ``α``, as in ``posteriors``.

Every kernel takes a step size (float or :mod:`.schedules` schedule; by default
``step_size="auto"``, each chain measures its own, see
:meth:`~posterity.infer.sgmcmc.SGMCMCKernel.measure_step_size`), a temperature
(``T < 1``: a colder, tempered posterior) and ``thin``: each returned sample is
``thin`` updates after the previous one, so memory stays bounded on long runs. During
the exploration stage of a cyclical schedule (Zhang et al. 2020) the kernels take
noise-free optimization steps and those updates never produce samples.

Chains. ``pyro.infer.MCMC(kernel, num_chains=C)`` runs the chains one after another in
one process (its ``_UnarySampler``; worker processes when there are spare cores),
calling ``kernel.setup`` once per chain and reading ``kernel.initial_params`` after it.
Without ``initial_params`` (to the kernel or to ``MCMC``), each chain starts from its
own draw from the prior: chain ``c`` of a run draws with the seed
``chain_seed(run_seed, c)``, where ``run_seed`` comes from torch's generator when the
run starts, so starts are reproducible from ``pyro.set_rng_seed`` and the chain index,
and a kernel reused for a second run starts afresh.

Processes. Under a process group (``torchrun``, see :mod:`posterity.infer.distributed`)
the same script runs ``MCMC(kernel, num_chains=C).run(X, y)`` on every rank, so ``W``
ranks run ``W·C`` chains. The chains differ across ranks without any seeding by the
user: when a run starts, every rank but 0 draws ``run_seed`` from torch's generator as
above, offsets it by ``distributed.rank_seed``'s ``1000003 · rank`` and reseeds torch's
generators with it (noise, minibatches and prior starts then follow a stream of that
rank's own); rank 0 leaves the generator alone, so its chains are those of a
one-process run with the same seed. Pyro's chain worker processes (started outside the
group) inherit their rank with the kernel. ``to_inference_data(mcmc)``, called on every
rank, gathers every rank's chains into one ``InferenceData`` (rank 0's first), the same
on every rank; ``mcmc.get_samples()`` stays local (this rank's chains).

Progress. ``pyro.infer.MCMC`` draws its own bar; to follow posterity's switch
(``POSTERITY_PROGRESS``, :func:`posterity.infer.progress.set_progress`), pass
``disable_progbar=not progress_enabled()`` from :mod:`posterity.infer.progress`.

Guards. After every update the kernels check the potential, the parameters (and
SGHMC's momentum) and raise :class:`~posterity.infer.train.NonFiniteError` naming the
update and its step size at the first NaN or Inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..checks import check_positive
from .base import NOISE_RATIO, Params, SGMCMCKernel
from .schedules import StepSize


class _LangevinStepRule:
    """``step_size="auto"`` for Langevin kernels (see
    :meth:`~posterity.infer.sgmcmc.SGMCMCKernel.measure_step_size`)."""

    temperature: float

    def noise_limited_step(self, noise: float, curvature: float) -> float:
        # on a Gaussian the variance comes out (1 + ε V / 4T) / (1 - ε λ / 4) times too
        # wide: the noise adds (ε/2)² V to the injected ε T, the Euler step the rest
        return 4 * NOISE_RATIO / (noise / self.temperature + curvature)

    def stable_step(self, curvature: float) -> float:
        # halves the distance to the mode along the stiffest direction per update
        return 1.0 / curvature

    def effective_temperature(self, step: float, noise: float) -> float:
        return self.temperature + step * noise / 4


class SGLD(_LangevinStepRule, SGMCMCKernel):
    """Stochastic gradient Langevin dynamics (Welling & Teh, ICML 2011).

    Example:
        >>> import pyro, torch
        >>> from pyro.infer import MCMC
        >>> from posterity.models import BayesianLogisticRegression
        >>> X, y = torch.randn(200, 3), torch.randint(0, 2, (200,)).float()
        >>> model = BayesianLogisticRegression(3, subsample_size=20)
        >>> mcmc = MCMC(SGLD(model), num_samples=50, warmup_steps=10,
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


class PreconditionedSGLD(_LangevinStepRule, SGMCMCKernel):
    """SGLD with an RMSprop preconditioner (Li, Chen, Carlson & Carin, AAAI 2016).

    The preconditioner follows the paper's algorithm 1: ``V`` averages the square of
    the per-datum mean gradient ``ḡ = ∇U / N``, where ``N`` is the size of the model's
    subsampled data plate (1 without one), so ``G ≈ 1 / |ḡ|`` and the step is
    ``(ε/2) G ∇U ≈ (ε/2) N ḡ / |ḡ|``: the paper's ε (around 1e-3 to 1e-4 for neural
    networks on tens of thousands of points) and λ = 1e-5 apply as published.

    With ``step_size="auto"`` (the default) the step is SGLD's rule in the coordinates
    ``G^(-1/2) θ``, where the update is plain SGLD: the gradient noise and the
    curvature are those of ``G^(1/2) ∇U`` and ``G^(1/2) H G^(1/2)``, with ``G`` from
    the mean of ``ḡ²`` over the probing minibatches (what the RMSprop average tracks).

    Args:
        alpha: the decay ``α`` of the squared-gradient average.
        eps: the ``λ`` that keeps ``G`` bounded.
        **kwargs: as :class:`SGMCMCKernel`.

    Example:
        >>> import pyro, torch
        >>> from pyro.infer import MCMC
        >>> from posterity.models import BayesianLogisticRegression
        >>> X, y = torch.randn(200, 3), torch.randint(0, 2, (200,)).float()
        >>> kernel = PreconditionedSGLD(BayesianLogisticRegression(3, subsample_size=20),
        ...                             step_size=1e-4)
        >>> MCMC(kernel, num_samples=20, warmup_steps=5, disable_progbar=True).run(X, y)
        >>> kernel.data_size
        200
    """

    def __init__(self, model: Callable, step_size: StepSize = "auto", alpha: float = 0.99,
                 eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(model, step_size, **kwargs)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.alpha = float(alpha)
        self.eps = check_positive("eps", eps)

    @property
    def data_size(self) -> int:
        """``N``, by which ``∇U`` is divided before it enters ``V``."""
        return self.potential.data_size if self.potential is not None else 1

    def init_state(self, params: Params) -> dict[str, Any]:
        return {"square_avg": {n: torch.zeros_like(v) for n, v in params.items()},
                "updates": 0}

    def measurement_metric(self, params: Params, probes: int) -> Params:
        mean_square = {n: torch.zeros_like(v) for n, v in params.items()}
        for _ in range(probes):
            for name, grad in self.potential.value_and_grad(params)[1].items():
                mean_square[name] += (grad / self.data_size).square() / probes
        return {n: (self.eps + v.sqrt()).rsqrt() for n, v in mean_square.items()}

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"preconditioner V of {n!r}": v for n, v in self.state["square_avg"].items()}

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        square_avg = self.state["square_avg"]
        self.state["updates"] += 1
        # the first update starts V at ḡ² rather than at (1 - α) ḡ² (no bias towards 0)
        alpha = self.alpha if self.state["updates"] > 1 else 0.0
        per_datum = 1.0 / self.data_size
        new = {}
        for name, value in params.items():
            grad = grads[name]
            square_avg[name].mul_(alpha).addcmul_(grad, grad, value=(1 - alpha) * per_datum**2)
            precond = 1.0 / (self.eps + square_avg[name].sqrt())
            drift = value - 0.5 * step_size * precond * grad
            new[name] = drift if exploring else drift + self.noise_like(
                value, step_size * self.temperature * precond
            )
        return new


DEFAULT_FRICTION = 10.0  # with a step size of one's own (and the command line's)


class SGHMC(SGMCMCKernel):
    """Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin, ICML 2014).

    Args:
        friction: ``α``, the friction rate; each update loses a fraction ``h α`` of
            the momentum, so ``h α < 1`` is needed. By default, ``"auto"`` with
            ``step_size="auto"``: ``2 sqrt(λ)``, the critical damping of the stiffest
            direction (``λ`` the largest curvature, measured with the step; with the
            step limited by the gradient noise, the relaxation takes ``V / α²`` updates
            while the dynamics is underdamped, so a lower friction only slows the
            chain), and 10 (the command line's) with a step size of one's own. With
            0.1 (the default before 2026-12-07) the minibatch gradient noise left
            posterior standard deviations of a logistic regression (300 points,
            minibatches of 32, h = 1e-2) 10-15 times NUTS's, against 1.1 times with 10.
        **kwargs: as :class:`SGMCMCKernel`; ``step_size`` is the time step ``h``
            (``"auto"`` by default, see :meth:`SGMCMCKernel.measure_step_size`).

    Example:
        >>> from posterity.infer.sgmcmc import CyclicalSchedule
        >>> kernel = SGHMC(lambda X, y: None, step_size=CyclicalSchedule(1e-3, 4, 8000, 0.25),
        ...                friction=10.0)
        >>> kernel.friction
        10.0
    """

    def __init__(self, model: Callable, step_size: StepSize = "auto",
                 friction: float | str | None = None, **kwargs: Any) -> None:
        super().__init__(model, step_size, **kwargs)
        if friction is None:
            friction = "auto" if self.auto_step else DEFAULT_FRICTION
        self.auto_friction = friction == "auto"
        if self.auto_friction and not self.auto_step:
            raise ValueError("friction='auto' is set with step_size='auto'; with a step "
                             "size of your own, give the friction too (e.g. 10)")
        self.friction = math.nan if self.auto_friction else check_positive("friction", friction)
        if self.schedule.initial * self.friction >= 1:
            raise ValueError(
                f"step_size * friction must be < 1 (the momentum kept per update is "
                f"1 - h α), got {self.schedule.initial} * {self.friction}"
            )

    def diagnostics(self) -> dict[str, Any]:
        stats = super().diagnostics()
        if self.auto_friction:
            stats["friction"] = self.friction  # this chain's own
        return stats

    def calibrate(self, curvature: float) -> None:
        if self.auto_friction:
            # critical damping of the stiffest direction: with the step limited by the
            # noise, a lower friction only lengthens the relaxation (in updates, V / α²)
            self.friction = 2 * curvature**0.5

    def noise_limited_step(self, noise: float, curvature: float) -> float:
        # the noise adds h² V to the injected 2 α h T per update: a ratio h V / (2 α T)
        return min(2 * NOISE_RATIO * self.friction * self.temperature / noise,
                   0.5 / self.friction)

    def stable_step(self, curvature: float) -> float:
        return min(0.5 / curvature**0.5, 0.5 / self.friction)

    def effective_temperature(self, step: float, noise: float) -> float:
        return self.temperature + step * noise / (2 * self.friction)

    def init_state(self, params: Params) -> dict[str, Any]:
        return {"momentum": {n: torch.zeros_like(v) for n, v in params.items()}}

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"momentum of {n!r}": v for n, v in self.state["momentum"].items()}

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
