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
from ..checks import check_int, check_positive
from ..train import NonFiniteError
from .inference_data import sgmcmc_inference_data
from .potential import Potential, chain_seed
from .schedules import StepSize, as_schedule

Params = dict[str, Tensor]


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
        step_size: ``ε``, a float or a schedule.
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
        self._schedule_checked = False
        self.state = self.init_state(start)

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
                f"num_samples) × thin plus the exploration updates", stacklevel=3)
        elif total - self.num_steps >= self.thin:
            warnings.warn(
                f"{self.schedule!r} was built for total_steps={total} updates, but chain "
                f"{self.chain} stopped after {self.num_steps}: its last cycle was cut short. "
                f"Build it with total_steps = (warmup_steps + num_samples) × thin plus the "
                f"exploration updates", stacklevel=3)

    def logging(self) -> dict[str, float]:
        return {"step_size": self.schedule(max(self.num_steps - 1, 0)),
                "potential": self._last_potential}

    def diagnostics(self) -> dict[str, Any]:
        """Per-chain statistics that ``MCMC.diagnostics()`` and ``arviz.from_pyro``
        read: no divergent draws (a diverging chain raises instead) and the updates
        taken."""
        return {"divergences": [], "num_steps": self.num_steps}

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
        kernel); see :func:`~posterity.infer.sgmcmc.inference_data.sgmcmc_inference_data`
        for the groups and for ``args``/``kwargs`` (new model arguments)."""
        if mcmc.kernel is not self:
            raise ValueError("mcmc was not run with this kernel")
        return sgmcmc_inference_data(mcmc, *args, **kwargs)
