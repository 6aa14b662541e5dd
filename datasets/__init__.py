"""posterity.datasets: loaders for binarized MNIST, small embedded data sets and files."""

from .digits import binarized_digits, digit_images
from .files import DataError, load_matrix, load_series, load_table, read_csv
from .mnist import binarized_mnist
from .series import gbp_usd, gbp_usd_rates
from .uci import concrete, pima, standardize

__all__ = [
    "DataError",
    "binarized_digits",
    "binarized_mnist",
    "concrete",
    "digit_images",
    "gbp_usd",
    "gbp_usd_rates",
    "load_matrix",
    "load_series",
    "load_table",
    "pima",
    "read_csv",
    "standardize",
]
