"""The shared machinery of the SG-MCMC kernels: setup from a trace, one start per chain,
thinning, schedules, temperature, guards and the ArviZ conversion (see
:mod:`.kernels` for the chains' starts and the guards)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import arviz as az
import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from torch import Tensor

from .. import distributed
from ..checks import check_int, check_positive, user_stacklevel
from ..train import NonFiniteError
from .inference_data import sgmcmc_inference_data
from .potential import Potential, chain_seed
from .schedules import NoiseScaledStep, StepSize, as_schedule

Params = dict[str, Tensor]

# step_size="auto" (SGMCMCKernel.measure_step_size): the minibatch gradient noise and
# the discretization may widen the posterior variance by this fraction; the noise is
# measured with this many minibatch gradients, the curvature with this many power
# iterations; a chain has reached the posterior when its squared gradient is at most
# SETTLED times its expected value there.
NOISE_RATIO = 0.1
NOISE_PROBES = 32
CURVATURE_ITERATIONS = 10
SETTLED = 9.0


def _same_objects(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


class SGMCMCKernel(MCMCKernel):
    """Shared machinery: setup from a trace, chain starts, thinning, schedules,
    temperature, guards and the ArviZ conversion.

    Subclasses implement :meth:`init_state` and :meth:`update` (and
    :meth:`state_tensors` when they carry tensors the guard should watch).

    Args:
        model: a Pyro program whose data plate subsamples
            (``pyro.plate("data", N, subsample_size=B)``), called with the arguments
            given to ``MCMC.run``.
        step_size: ``ε``, a float, a schedule, or ``"auto"`` (the default of the kernels
            that have a rule for it: :class:`SGLD`, :class:`PreconditionedSGLD` and
            :class:`SGHMC`): set per chain by
            :meth:`measure_step_size`.
        temperature: ``T``; the chain targets ``p(θ | D)^(1/T)``.
        thin: updates per returned sample.
        require_subsample: refuse a model with no subsampled plate (a full-batch model
            would make the kernel an unadjusted Langevin sampler; pass ``False`` to
            allow it).
        initial_params: unconstrained starting values shared by every chain (default:
            a fresh prior draw per chain, see the module docstring).

    Attributes:
        chain: the index of the chain being run (0, 1, ... within one ``MCMC.run``);
            this and the attributes below are set by ``setup``.
        warmup_steps, model_args, model_kwargs: what ``MCMC.run`` passed, kept for
            :meth:`to_inference_data`.
        num_steps: updates taken in this chain.
    """

    def __init__(
        self,
        model: Callable,
        step_size: StepSize = "auto",
        temperature: float = 1.0,
        thin: int = 1,
        require_subsample: bool = True,
        initial_params: Params | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a Pyro program, got {type(model).__name__}")
        self.model = model
        self.schedule = as_schedule(step_size)
        if self.auto_step and not self.has_step_rule():
            raise ValueError(f"{type(self).__name__} has no automatic step size; give "
                             "step_size as a number or a schedule")
        self.temperature = check_positive("temperature", temperature)
        self.thin = check_int("thin", thin, 1)
        self.require_subsample = bool(require_subsample)
        self.transforms: dict[str, Any] | None = None
        self.potential: Potential | None = None
        self._user_initial_params = initial_params
        self._initial_params = initial_params
        self.num_steps = 0
        self.state: dict[str, Any] = {}
        self._last_potential = float("nan")
        self.chain = 0
        self.run_seed: int | None = None
        self.warmup_steps = 0
        self.model_args: tuple = ()
        self.model_kwargs: dict[str, Any] = {}
        self._rng_after_chain: Tensor | None = None
        self._schedule_checked = False
        self._measure_at_start = False
        self._cooling = False
        self._previous_noise = self._last_noise = math.nan
        self._metric: Params | None = None
        self.num_draws = 0

    # --- MCMCKernel protocol ---------------------------------------------------------
    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.chain = self._chain_index(args, kwargs)
        self.model_args, self.model_kwargs = tuple(args), dict(kwargs)
        self.potential = Potential(self.model, args, kwargs)
        if self.require_subsample and not self.potential.plates:
            raise ValueError(
                f"{type(self).__name__} needs a model whose data plate subsamples, e.g. "
                "pyro.plate('data', N, subsample_size=B); this model has none (pass "
                "require_subsample=False to run full-batch Langevin dynamics)"
            )
        self.transforms = self.potential.transforms
        start = self._user_initial_params
        if start is None:
            start = self.potential.prior_draw(seed=chain_seed(self.run_seed, self.chain))
        else:
            start = self._checked_start(start)
        self._initial_params = start
        self.num_steps = 0
        self.num_draws = 0
        self._cooling = False
        self._previous_noise = self._last_noise = math.nan
        self._schedule_checked = False
        self.state = self.init_state(start)
        # measured at the first draw, not here: pyro's MCMC also calls setup in the parent
        # process of its chain workers, only to read the transforms
        self._measure_at_start = self.auto_step

    def _chain_index(self, args: tuple, kwargs: dict) -> int:
        """The next chain of the same ``MCMC.run`` (same argument objects, torch's
        generator untouched since the last chain ended), else chain 0 of a new run."""
        continued = (
            self._rng_after_chain is not None
            and _same_objects(args, self.model_args)
            and kwargs.keys() == self.model_kwargs.keys()
            and _same_objects(tuple(kwargs.values()), tuple(self.model_kwargs.values()))
            and torch.equal(torch.get_rng_state(), self._rng_after_chain)
        )
        if continued:
            return self.chain + 1
        self.run_seed = int(torch.randint(0, 2**62, ()))
        rank = self._group_rank()
        if rank > 0:
            # chains on every rank of a process group: each rank but 0 moves to a stream
            # of its own, derived from the one it shares with the others (rank 0 keeps
            # the caller's stream and runs exactly what one process would run)
            self.run_seed = distributed.rank_seed(self.run_seed, rank)
            torch.manual_seed(self.run_seed)
        return 0

    def _group_rank(self) -> int:
        """This process's rank in its process group; in one of ``pyro.infer.MCMC``'s
        chain worker processes (spawned outside the group), the rank of the process that
        sent this kernel there."""
        return distributed.rank() if distributed.is_initialized() else self._sender_rank

    _sender_rank = 0

    def __getstate__(self) -> dict[str, Any]:
        # a kernel pickled for a spawned chain worker carries its rank along, so the
        # worker's chains still get their rank's stream
        state = self.__dict__.copy()
        state["_sender_rank"] = distributed.rank() if distributed.is_initialized() else 0
        return state

    def _checked_start(self, start: Params) -> Params:
        if not isinstance(start, dict) or set(start) != set(self.potential.names):
            got = sorted(start) if isinstance(start, dict) else type(start).__name__
            raise ValueError(f"initial_params must give the latent sites "
                             f"{sorted(self.potential.names)}, got {got}")
        for name, value in start.items():
            if tuple(value.shape) != tuple(self.potential.shapes[name]):
                raise ValueError(f"initial_params[{name!r}] must have shape "
                                 f"{tuple(self.potential.shapes[name])}, got {tuple(value.shape)}")
        return start

    def cleanup(self) -> None:
        """End of a chain: remember where torch's generator stands (to tell the next
        chain of the same run from a new run) and check the schedule's length."""
        self._rng_after_chain = torch.get_rng_state()
        if self.potential is not None and not self._schedule_checked:
            self._schedule_checked = True
            self._check_schedule_length(final=True)

    @property
    def initial_params(self) -> Params:
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: Params) -> None:
        # ``MCMC(initial_params=...)`` sets a start per chain before each ``setup``
        self._user_initial_params = params
        self._initial_params = params

    def sample(self, params: Params) -> Params:
        """``thin`` sampling-stage updates (plus any exploration updates in between)."""
        if self.auto_step:
            self._auto_step_at_draw(params)
        self.num_draws += 1
        taken = 0
        while taken < self.thin:
            exploring = self.schedule.is_exploration(self.num_steps)
            if self.num_steps == getattr(self.schedule, "total_steps", None):
                self._check_schedule_length(final=False)
            params = self.step(params, self.schedule(self.num_steps), exploring)
            self.num_steps += 1
            taken += not exploring
        return params

    def _check_schedule_length(self, final: bool) -> None:
        """Warn when a schedule with a length (``total_steps``) does not fit the run:
        ``warmup_steps × thin + num_samples × thin`` sampling updates, plus the
        exploration updates between them."""
        total = getattr(self.schedule, "total_steps", None)
        if total is None:
            return
        if not final:
            self._schedule_checked = True
            warnings.warn(
                f"{self.schedule!r} was built for total_steps={total} updates, but chain "
                f"{self.chain} goes on past them (warm-up {self.warmup_steps} × thin "
                f"{self.thin} already takes {self.warmup_steps * self.thin}): the schedule "
                f"wraps into extra cycles. Build it with total_steps = (warmup_steps + "
                f"num_samples) × thin plus the exploration updates", stacklevel=user_stacklevel())
        elif total - self.num_steps >= self.thin:
            warnings.warn(
                f"{self.schedule!r} was built for total_steps={total} updates, but chain "
                f"{self.chain} stopped after {self.num_steps}: its last cycle was cut short. "
                f"Build it with total_steps = (warmup_steps + num_samples) × thin plus the "
                f"exploration updates", stacklevel=user_stacklevel())

    def logging(self) -> dict[str, float]:
        return {"step_size": self.schedule(max(self.num_steps - 1, 0)),
                "potential": self._last_potential}

    def diagnostics(self) -> dict[str, Any]:
        """Per-chain statistics that ``MCMC.diagnostics()`` and ``arviz.from_pyro``
        read: no divergent draws (a diverging chain raises instead) and the updates
        taken (and, with ``step_size="auto"``, the chain's step size)."""
        stats = {"divergences": [], "num_steps": self.num_steps}
        if self.auto_step:
            stats["step_size"] = self.schedule.step_size  # this chain's own
        return stats

    # --- step_size="auto" ---------------------------------------------------------------
    @property
    def auto_step(self) -> bool:
        return isinstance(self.schedule, NoiseScaledStep)

    def has_step_rule(self) -> bool:
        return type(self).noise_limited_step is not SGMCMCKernel.noise_limited_step

    def _auto_step_at_draw(self, params: Params) -> None:
        """The measurements of ``step_size="auto"`` due at this draw (see
        :meth:`measure_step_size`)."""
        warmup, draw = self.warmup_steps, self.num_draws
        if self._measure_at_start:
            self._measure_at_start = False
            self.measure_step_size(params, sampling=warmup < 2)
            self._previous_noise = self._last_noise
            if warmup < 2:
                warnings.warn(
                    f"step_size='auto' measured the gradient noise at chain {self.chain}'s "
                    f"start (warmup_steps={warmup}): its draws begin there, away from the "
                    "posterior, and where the noise is far larger the step may be much too "
                    "small to leave, so they may not be from the posterior at all. Give a "
                    "warm-up (warmup_steps of 2 or more, long enough to reach the "
                    "posterior)", stacklevel=user_stacklevel())
            return
        if warmup < 2 or draw not in {warmup // 4, warmup // 2, 3 * warmup // 4, warmup}:
            return
        noise, squared_gradient, curvature, trace = self.measure(params)
        # far from the posterior the noise is large too, and falls as the chain arrives
        falling = not self._cooling and noise <= self._previous_noise / 2
        self._previous_noise = noise
        if draw == warmup:  # judged at the step of the draws
            self._cooling = True
            self._set_step(noise, curvature, sampling=True)
        expected = trace * self.effective_temperature(self.schedule.step_size, noise)
        settled = not falling and squared_gradient <= SETTLED * expected
        if draw == warmup and not settled:
            reason = (f"its gradient noise was still falling (to {noise:.3g}, from more than "
                      "twice that)" if falling else
                      f"its squared gradient was {squared_gradient:.3g}, against about "
                      f"{expected:.3g} (T tr H) at the posterior")
            warnings.warn(
                f"step_size='auto': chain {self.chain} had not settled at the posterior by "
                f"the end of the warm-up ({reason}): its first draws are not from the "
                "posterior. Give a longer warm-up (warmup_steps × thin updates)",
                stacklevel=user_stacklevel())
        if draw < warmup:
            self._cooling = self._cooling or settled
            self._set_step(noise, curvature, sampling=self._cooling)

    def measure(self, params: Params, probes: int = NOISE_PROBES
                ) -> tuple[float, float, float, float]:
        """At ``params``: the gradient noise ``V`` (:meth:`gradient_noise`), the squared
        full-data gradient ``|∇U|²`` (unbiased, from the same minibatches), the largest
        curvature ``λ`` and the trace of the Hessian (:meth:`hessian_trace`). The
        curvature also calibrates the kernel (SGHMC's friction)."""
        self._metric = self.measurement_metric(params, probes)
        try:
            curvature = self.curvature(params)
            self.calibrate(curvature)
            grads = self._probe_gradients(params, probes)
            squared = float(grads.mean(0).square().sum() - grads.var(0).sum() / probes)
            return self._noise(grads), squared, curvature, self.hessian_trace(params)
        finally:
            self._metric = None

    def measurement_metric(self, params: Params, probes: int) -> Params | None:
        """``G^(1/2)`` per coordinate, for a kernel that moves with a diagonal
        preconditioner ``G``: the step is then measured in the coordinates
        ``G^(-1/2) θ``, where the kernel is plain SGLD (gradients ``G^(1/2) ∇U``,
        Hessian ``G^(1/2) H G^(1/2)``). ``None``: the plain coordinates."""
        return None

    def measure_step_size(self, params: Params, sampling: bool) -> float:
        """Set the step size of ``step_size="auto"`` at ``params`` and return it.

        While the chain travels to the posterior it takes the largest stable step,
        ``stable_step(λ)``, with ``λ`` the largest curvature of ``U`` (power iteration
        on minibatch Hessian-vector products). For the draws (``sampling``) the step is
        also limited by the gradient noise: with ``V`` the variance of the minibatch
        gradient along its noisiest direction (:meth:`gradient_noise`),
        ``noise_limited_step(V, λ)`` is the step at which the noise and the
        discretization together widen the posterior variance by ``NOISE_RATIO`` (10 %)
        to first order (Welling & Teh 2011, section 4: the injected noise must dominate
        the minibatch noise; for SGLD on a Gaussian the variance is
        ``(1 + ε V / 4T) / (1 - ε λ / 4)`` times the exact one).

        During a warm-up of ``w`` draws the kernel measures at draws ``w/4``, ``w/2``,
        ``3w/4`` and ``w``. It keeps the stable step until the chain has reached the
        posterior: the noise has stopped falling (by half since the last measurement;
        far from the posterior the residuals, and with them the noise, are large) and
        the squared gradient ``|∇U|²`` is at most ``SETTLED`` (9) times its value there,
        about ``T_eff tr H`` (``T_eff``, the temperature that the current step's noise
        gives, :meth:`effective_temperature`; ``tr H`` by :meth:`hessian_trace`). Then it
        sets the noise-limited step, re-measured at each later point, so that the chain
        cools down to it. At the end of the warm-up the same test, at the temperature of
        the draws' step, decides whether the chain is warned that its first draws are not
        yet from the posterior. With fewer than two warm-up draws everything is measured
        at the chain's start, with a warning that the draws may not be from the
        posterior.
        """
        noise, _, curvature, _ = self.measure(params)
        self._last_noise = noise
        return self._set_step(noise, curvature, sampling)

    def _set_step(self, noise: float, curvature: float, sampling: bool) -> float:
        if not sampling:
            step = self.stable_step(curvature)
        else:
            if noise == 0:
                raise ValueError(
                    "step_size='auto' sets the step from the minibatch gradient noise, and "
                    "this model's gradient has none (its data plate does not subsample): "
                    "give step_size as a number or a schedule")
            step = min(self.noise_limited_step(noise, curvature), self.stable_step(curvature))
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step_size='auto' found no step size at the state of chain "
                             f"{self.chain} (got {step}): give step_size as a number")
        self.schedule.step_size = step
        return step

    def _probe_gradients(self, params: Params, probes: int) -> Tensor:
        """``[probes, d]``: ``∇U`` on ``probes`` independent minibatches."""
        metric = self._metric or {}
        return torch.stack([
            torch.cat([(g * metric[n] if n in metric else g).flatten()
                       for n, g in self.potential.value_and_grad(params)[1].items()])
            for _ in range(probes)
        ])

    def gradient_noise(self, params: Params, probes: int = NOISE_PROBES) -> float:
        """The variance of the minibatch ``∇U`` at ``params`` along its noisiest
        direction: found by the first half of ``probes`` minibatch gradients, the
        variance measured on the other half (so that the estimate is not biased upward,
        as the largest eigenvalue of a sample covariance is), and no less than the
        largest variance of a single coordinate."""
        return self._noise(self._probe_gradients(params, probes))

    @staticmethod
    def _noise(grads: Tensor) -> float:
        half = grads.shape[0] // 2
        first, second = grads[:half], grads[half:]
        direction = torch.linalg.svd(first - first.mean(0), full_matrices=False).Vh[0]
        along = (second @ direction).var()
        return float(torch.maximum(along, second.var(0).max()))

    def _hessian_vector(self, params: Params, direction: Params) -> Params:
        """``H v`` for the minibatch potential at ``params`` (one minibatch); under a
        :meth:`measurement_metric` ``m``, ``m H (m v)``."""
        metric = self._metric
        if metric is not None:
            direction = {n: d * metric[n] for n, d in direction.items()}
        leaves = {n: v.detach().requires_grad_(True) for n, v in params.items()}
        grads = torch.autograd.grad(self.potential(leaves), list(leaves.values()),
                                    create_graph=True)
        product = torch.autograd.grad(grads, list(leaves.values()),
                                      grad_outputs=[direction[n] for n in leaves],
                                      allow_unused=True)
        product = {n: (torch.zeros_like(v) if p is None else p.detach())
                   for (n, v), p in zip(params.items(), product)}
        return product if metric is None else {n: p * metric[n] for n, p in product.items()}

    def curvature(self, params: Params, iterations: int = CURVATURE_ITERATIONS) -> float:
        """The largest ``|eigenvalue|`` of the Hessian of ``U`` at ``params``, by power
        iteration on minibatch Hessian-vector products (one minibatch per iteration)."""
        direction = {n: torch.randn_like(v) for n, v in params.items()}
        size = 1.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((d * d).sum() for d in direction.values()))
            direction = self._hessian_vector(params, {n: d / norm for n, d in direction.items()})
            size = float(torch.sqrt(sum((d * d).sum() for d in direction.values())))
            if not math.isfinite(size) or size == 0:
                break
        if not math.isfinite(size):
            raise NonFiniteError(f"the curvature of the potential is {size} at update "
                                 f"{self.num_steps} of chain {self.chain}; give step_size as "
                                 "a number")
        return size

    def hessian_trace(self, params: Params, probes: int = CURVATURE_ITERATIONS) -> float:
        """``tr H`` at ``params`` by Hutchinson's estimator, ``E[v^T H v]`` over Rademacher
        ``v`` (one minibatch each): at the posterior ``E|∇U|² = T tr H``."""
        total = 0.0
        for _ in range(probes):
            signs = {n: torch.randint_like(v, 2) * 2 - 1 for n, v in params.items()}
            product = self._hessian_vector(params, signs)
            total += float(sum((signs[n] * product[n]).sum() for n in params))
        return total / probes

    def noise_limited_step(self, noise: float, curvature: float) -> float:
        """The step at which minibatch gradient noise of variance ``noise`` and the
        discretization at curvature ``curvature`` widen the variance by ``NOISE_RATIO``
        (kernels with a rule)."""
        raise NotImplementedError

    def stable_step(self, curvature: float) -> float:
        """The warm-up step for a potential whose largest curvature is ``curvature``."""
        raise NotImplementedError

    def effective_temperature(self, step: float, noise: float) -> float:
        """The temperature at which the chain samples with ``step`` and minibatch noise
        ``noise`` (the injected noise's plus the minibatch noise's share)."""
        raise NotImplementedError

    def calibrate(self, curvature: float) -> None:
        """Set any other setting that follows the curvature (SGHMC's ``"auto"``
        friction) before the step is chosen."""

    # --- the update --------------------------------------------------------------------
    def gradient(self, params: Params, step_size: float | None = None) -> Params:
        """``∇U`` at ``params``; a NaN or Inf potential is a :class:`NonFiniteError`."""
        value, grads = self.potential.value_and_grad(params)
        self._last_potential = float(value)
        if not math.isfinite(self._last_potential):
            step_size = self.schedule(self.num_steps) if step_size is None else step_size
            raise NonFiniteError(
                f"the potential became {self._last_potential} at update {self.num_steps} "
                f"of chain {self.chain} (step size {step_size:.3g}); lower the step size"
            )
        return grads

    def step(self, params: Params, step_size: float, exploring: bool) -> Params:
        """One update: the subclass's rule on the gradient at ``params``, guarded."""
        new = self.update(params, self.gradient(params, step_size), step_size, exploring)
        self.check_finite(new, step_size)
        return new

    def check_finite(self, params: Params, step_size: float) -> None:
        """Raise :class:`NonFiniteError` if a parameter or a state tensor holds NaN or
        Inf after update ``num_steps`` (one device synchronization)."""
        watched = {f"parameter {n!r}": v for n, v in params.items()}
        watched.update(self.state_tensors())
        finite = torch.stack([v.isfinite().all() for v in watched.values()])
        if bool(finite.all()):
            return
        bad = [name for name, ok in zip(watched, finite.tolist()) if not ok]
        raise NonFiniteError(
            f"{', '.join(bad)} became NaN or Inf at update {self.num_steps} of chain "
            f"{self.chain} (step size {step_size:.3g}): the chain diverged; lower the "
            f"step size"
        )

    def state_tensors(self) -> dict[str, Tensor]:
        """Tensors of the kernel's state that the guard checks (e.g. momentum)."""
        return {}

    def init_state(self, params: Params) -> dict[str, Any]:
        return {}

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        raise NotImplementedError

    def noise_like(self, value: Tensor, variance: float | Tensor) -> Tensor:
        return torch.randn_like(value) * (variance**0.5 if isinstance(variance, float)
                                          else variance.sqrt())

    def step_indices(self, num_samples: int, warmup_steps: int = 0) -> list[int]:
        """The update index (0-based, counted from the chain's first update, warm-up
        included) that produced each of ``num_samples`` draws kept after
        ``warmup_steps`` warm-up draws."""
        indices, t = [], 0
        while len(indices) < warmup_steps + num_samples:
            taken = 0
            while taken < self.thin:
                taken += not self.schedule.is_exploration(t)
                t += 1
            indices.append(t - 1)
        return indices[warmup_steps:]

    # --- ArviZ --------------------------------------------------------------------------
    def to_inference_data(self, mcmc: Any, *args: Any, **kwargs: Any) -> az.InferenceData:
        """``InferenceData`` of ``mcmc`` (a finished ``pyro.infer.MCMC`` run with this
        kernel); see :func:`~posterity.infer.sgmcmc.sgmcmc_inference_data`
        for the groups and for ``args``/``kwargs`` (new model arguments)."""
        if mcmc.kernel is not self:
            raise ValueError("mcmc was not run with this kernel")
        return sgmcmc_inference_data(mcmc, *args, **kwargs)
