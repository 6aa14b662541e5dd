"""posterity.infer.smc: particle filtering, PaRIS, particle Gibbs, PPG and score ascent."""

from .backward import exact_backward, rejection_backward
from .csmc import ParticleGibbs, ParticleGibbsResult
from .filter import FilterResult, FilterStep, ParticleFilter
from .learning import LearningResult, ScoreAscent
from .paris import PaRIS, SmoothingResult
from .ppg import PPG, PPGResult
from .resampling import multinomial, residual, stratified, systematic

__all__ = [
    "PPG",
    "FilterResult",
    "FilterStep",
    "LearningResult",
    "PPGResult",
    "PaRIS",
    "ParticleFilter",
    "ParticleGibbs",
    "ParticleGibbsResult",
    "ScoreAscent",
    "SmoothingResult",
    "exact_backward",
    "multinomial",
    "rejection_backward",
    "residual",
    "stratified",
    "systematic",
]
