"""posterity.infer.sgmcmc: stochastic-gradient MCMC kernels for ``pyro.infer.MCMC``."""

from .kernels import SGHMC, SGLD, PreconditionedSGLD, SGMCMCKernel, pSGLD
from .potential import Potential
from .predictive import (
    classification_metrics,
    pointwise_predictive,
    regression_metrics,
    sgmcmc_inference_data,
)
from .schedules import ConstantSchedule, CyclicalSchedule, PolynomialDecay, Schedule
from .structured import StructuredSGLD, StructuredSGMCMC

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
    "StructuredSGLD",
    "StructuredSGMCMC",
    "classification_metrics",
    "pSGLD",
    "pointwise_predictive",
    "regression_metrics",
    "sgmcmc_inference_data",
]
