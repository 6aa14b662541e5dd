"""posterity.infer.smc: particle filtering (smoothing and learning are under way)."""

from .filter import FilterResult, ParticleFilter
from .resampling import multinomial, residual, stratified, systematic

__all__ = ["FilterResult", "ParticleFilter", "multinomial", "residual", "stratified",
           "systematic"]
