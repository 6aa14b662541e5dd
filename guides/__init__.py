"""posterity.guides: variational families and recognition networks."""

from .encoders import GaussianEncoder
from .sbn import SigmoidRecognitionNet

__all__ = ["GaussianEncoder", "SigmoidRecognitionNet"]
