"""posterity.infer.smc: particle filtering, PaRIS, particle Gibbs, PPG and score ascent."""

from .backward import exact_backward, rejection_backward
from .filter import FilterResult, FilterStep, ParticleFilter
from .paris import PaRIS, SmoothingResult
from .particle_gibbs import ParticleGibbs, ParticleGibbsResult
from .ppg import PPG, PPGResult
from .resampling import multinomial, residual, stratified, systematic
from .score_ascent import LearningResult, ScoreAscent

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
