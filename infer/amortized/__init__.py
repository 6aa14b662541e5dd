"""posterity.infer.amortized: amortized variational inference (ELBO, β, IWAE, Multi-Rate
VAE), importance-sampled evaluation and PSIS diagnostics of the recognition network."""

from . import sections  # noqa: F401  (registers the report sections)
from .engine import AmortizedEngine
from .evaluate import RateDistortion, log_likelihood, rate_distortion, reference_points
from .inference_data import amortized_inference_data
from .vi import OBJECTIVES, AmortizedVI

__all__ = [
    "OBJECTIVES",
    "AmortizedEngine",
    "AmortizedVI",
    "RateDistortion",
    "amortized_inference_data",
    "log_likelihood",
    "rate_distortion",
    "reference_points",
]
