"""posterity.infer.smc: particle filtering, PaRIS, particle Gibbs and PPG."""

from .backward import exact_backward, rejection_backward
from .csmc import ParticleGibbs, ParticleGibbsResult
from .filter import FilterResult, FilterStep, ParticleFilter
from .paris import PaRIS, SmoothingResult
from .ppg import PPG, PPGResult
from .resampling import multinomial, residual, stratified, systematic

__all__ = [
    "PPG",
    "FilterResult",
    "FilterStep",
    "PPGResult",
    "PaRIS",
    "ParticleFilter",
    "ParticleGibbs",
    "ParticleGibbsResult",
    "SmoothingResult",
    "exact_backward",
    "multinomial",
    "rejection_backward",
    "residual",
    "stratified",
    "systematic",
]
