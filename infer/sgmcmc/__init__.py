"""posterity.infer.sgmcmc: stochastic-gradient MCMC kernels for ``pyro.infer.MCMC``."""

from .kernels import SGHMC, SGLD, PreconditionedSGLD, SGMCMCKernel, pSGLD
from .potential import Potential
from .schedules import ConstantSchedule, CyclicalSchedule, PolynomialDecay, Schedule

__all__ = [
    "SGHMC",
    "SGLD",
    "ConstantSchedule",
    "CyclicalSchedule",
    "PolynomialDecay",
    "Potential",
    "PreconditionedSGLD",
    "SGMCMCKernel",
    "Schedule",
    "pSGLD",
]
