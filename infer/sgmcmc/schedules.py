"""Step-size schedules for SG-MCMC: constant, polynomial decay and cyclical.

A schedule maps the update count ``t = 0, 1, 2, ...`` to a step size, and says whether
update ``t`` belongs to an exploration stage (optimization: no noise, no samples).
"""

from __future__ import annotations

import math
import warnings

from ..checks import check_int, check_positive, user_stacklevel


class Schedule:
    """Base class: ``schedule(t)`` is the step size of update ``t``."""

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def is_exploration(self, t: int) -> bool:
        return False

    @property
    def initial(self) -> float:
        return self(0)


class ConstantSchedule(Schedule):
    """``ε_t = ε``."""

    def __init__(self, step_size: float) -> None:
        self.step_size = check_positive("step_size", step_size)

    def __call__(self, t: int) -> float:
        return self.step_size

    def __repr__(self) -> str:
        return f"ConstantSchedule({self.step_size:g})"


class PolynomialDecay(Schedule):
    """``ε_t = a (b + t)^(-γ)`` (Welling & Teh 2011), ``γ ∈ (0.5, 1]`` for
    the Robbins-Monro conditions (``Σ ε_t = ∞``, ``Σ ε_t² < ∞``); another positive
    ``γ`` is allowed with a warning.

    Example:
        >>> round(PolynomialDecay(0.1, b=1.0, gamma=1.0)(9), 6)
        0.01
    """

    def __init__(self, a: float, b: float = 1.0, gamma: float = 0.55) -> None:
        self.a = check_positive("a", a)
        self.b = check_positive("b", b)
        self.gamma = check_positive("gamma", gamma)
        if not 0.5 < self.gamma <= 1:
            warnings.warn(
                f"PolynomialDecay gamma={self.gamma:g} is outside (0.5, 1], where the step "
                f"sizes meet the Robbins-Monro conditions: "
                + ("they shrink too fast for the chain to keep moving" if self.gamma > 1
                   else "their squares do not sum, so the discretization error does not "
                        "vanish"), stacklevel=user_stacklevel())

    def __call__(self, t: int) -> float:
        return self.a * (self.b + t) ** (-self.gamma)

    def __repr__(self) -> str:
        return f"PolynomialDecay(a={self.a:g}, b={self.b:g}, gamma={self.gamma:g})"


class CyclicalSchedule(Schedule):
    """The cyclical cosine schedule of Zhang et al. (ICLR 2020, eq. 1).

    With ``K = total_steps`` updates in ``M = num_cycles`` cycles of length
    ``L = ceil(K / M)``, update ``t`` (0-based) has position ``r = (t mod L) / L`` in its
    cycle and step size ``ε_t = (ε_0 / 2) (cos(π r) + 1)``. The first
    ``exploration_ratio`` of each cycle (``r < exploration_ratio``) is exploration:
    kernels take optimization steps there and return no samples.
    """

    def __init__(
        self,
        initial_step_size: float,
        num_cycles: int,
        total_steps: int,
        exploration_ratio: float = 0.0,
    ) -> None:
        self.initial_step_size = check_positive("initial_step_size", initial_step_size)
        self.num_cycles = check_int("num_cycles", num_cycles, 1)
        self.total_steps = check_int("total_steps", total_steps, num_cycles)
        if not isinstance(exploration_ratio, (int, float)) or not 0 <= exploration_ratio < 1:
            raise ValueError(f"exploration_ratio must be in [0, 1), got {exploration_ratio!r}")
        self.exploration_ratio = float(exploration_ratio)
        self.cycle_length = math.ceil(total_steps / num_cycles)

    def position(self, t: int) -> float:
        return (t % self.cycle_length) / self.cycle_length

    def __call__(self, t: int) -> float:
        return 0.5 * self.initial_step_size * (math.cos(math.pi * self.position(t)) + 1)

    def is_exploration(self, t: int) -> bool:
        return self.position(t) < self.exploration_ratio

    def __repr__(self) -> str:
        return (f"CyclicalSchedule({self.initial_step_size:g}, num_cycles={self.num_cycles}, "
                f"total_steps={self.total_steps}, exploration_ratio={self.exploration_ratio:g})")


class NoiseScaledStep(Schedule):
    """``step_size="auto"``: a constant step that the kernel sets, chain by chain, from
    the minibatch gradient noise it measures (see
    :meth:`~posterity.infer.sgmcmc.SGMCMCKernel.measure_step_size`); ``nan`` until
    the first chain starts."""

    def __init__(self) -> None:
        self.step_size = math.nan

    def __call__(self, t: int) -> float:
        return self.step_size

    @property
    def initial(self) -> float:
        return self.step_size

    def __repr__(self) -> str:
        return f"NoiseScaledStep({self.step_size:.3g})"


StepSize = float | Schedule | str


def as_schedule(step_size: StepSize, name: str = "step_size") -> Schedule:
    """A float becomes a :class:`ConstantSchedule`, ``"auto"`` a :class:`NoiseScaledStep`;
    a schedule passes through."""
    if isinstance(step_size, str):
        if step_size != "auto":
            raise ValueError(f"{name} must be a number, a Schedule or 'auto', got {step_size!r}")
        return NoiseScaledStep()
    if isinstance(step_size, Schedule):
        if not (isinstance(step_size, NoiseScaledStep) or step_size.initial > 0):
            raise ValueError(f"{name} must start positive, got {step_size.initial}")
        return step_size
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise TypeError(f"{name} must be a float, a Schedule or 'auto', got "
                        f"{type(step_size).__name__}")
    return ConstantSchedule(check_positive(name, step_size))
