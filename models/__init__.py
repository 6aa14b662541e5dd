"""posterity.models: Pyro programs that generate data, and nothing else."""

from .bnn import BayesianLogisticRegression, BayesianMLP
from .nn import mlp
from .plates import data_plate
from .vae import VAE, LinearGaussianVAE

__all__ = [
    "VAE",
    "BayesianLogisticRegression",
    "BayesianMLP",
    "LinearGaussianVAE",
    "data_plate",
    "mlp",
]
