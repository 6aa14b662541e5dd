"""posterity.infer: engines, objectives, evaluation, diagnostics and the CLI."""

from .diagnostics import to_inference_data
from .evaluate import RateDistortion, log_likelihood, rate_distortion
from .importance import WeightedParticles, weighted_particles
from .report import report
from .train import History, NonFiniteError, fit
from .vi import AmortizedVI
from .wake_sleep import WakeSleep

__all__ = [
    "AmortizedVI",
    "History",
    "NonFiniteError",
    "RateDistortion",
    "WakeSleep",
    "WeightedParticles",
    "fit",
    "log_likelihood",
    "rate_distortion",
    "report",
    "to_inference_data",
    "weighted_particles",
]
