"""posterity.datasets: loaders for binarized MNIST and small embedded data sets."""

from .digits import binarized_digits
from .mnist import binarized_mnist
from .uci import concrete, pima, standardize

__all__ = ["binarized_digits", "binarized_mnist", "concrete", "pima", "standardize"]
