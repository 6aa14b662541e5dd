"""posterity.infer.sgmcmc: stochastic-gradient MCMC kernels for ``pyro.infer.MCMC``."""

from . import sections  # noqa: F401  (registers the report sections)
from .inference_data import observed_pointwise, sgmcmc_inference_data
from .kernels import SGHMC, SGLD, PreconditionedSGLD, SGMCMCKernel, pSGLD
from .potential import Potential
from .predictive import classification_metrics, pointwise_predictive, regression_metrics
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
    "observed_pointwise",
    "pSGLD",
    "pointwise_predictive",
    "regression_metrics",
    "sgmcmc_inference_data",
]
