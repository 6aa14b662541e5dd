"""posterity.guides: variational families and recognition networks."""

from .encoders import GaussianEncoder

__all__ = ["GaussianEncoder"]
