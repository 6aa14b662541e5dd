"""posterity.infer.smc: particle filtering, PaRIS, particle Gibbs, PPG and score ascent.

Every engine takes a :class:`posterity.models.StateSpaceModel` and checks it against the
protocol when it is built; :func:`check_model` runs the same checks and lists every
problem.
"""

from . import sections  # noqa: F401  (registers the report sections)
from .backward import BackwardKernel, exact_backward, rejection_backward
from .filter import FilterResult, FilterStep, ParticleFilter
from .paris import PaRIS, SmoothingResult
from .particle_gibbs import ParticleGibbs, ParticleGibbsResult
from .ppg import PPG, PPGResult
from .protocol import ModelCheck, check_model
from .resampling import multinomial, residual, stratified, systematic
from .score_ascent import LearningResult, ScoreAscent, ScoreAscentResult

__all__ = [
    "BackwardKernel",
    "FilterResult",
    "FilterStep",
    "LearningResult",
    "ModelCheck",
    "PPG",
    "PPGResult",
    "PaRIS",
    "ParticleFilter",
    "ParticleGibbs",
    "ParticleGibbsResult",
    "ScoreAscent",
    "ScoreAscentResult",
    "SmoothingResult",
    "check_model",
    "exact_backward",
    "multinomial",
    "rejection_backward",
    "residual",
    "stratified",
    "systematic",
]
