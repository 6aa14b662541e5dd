"""posterity.models: Pyro programs that generate data, and nothing else."""

from .bnn import BayesianLogisticRegression, BayesianMLP
from .nn import mlp
from .plates import data_plate
from .ssm import (
    ChaoticRNN,
    LinearGaussianSSM,
    SimulatedPath,
    StateSpaceModel,
    StochasticVolatility,
)
from .vae import VAE, LinearGaussianVAE

__all__ = [
    "VAE",
    "BayesianLogisticRegression",
    "BayesianMLP",
    "ChaoticRNN",
    "LinearGaussianSSM",
    "LinearGaussianVAE",
    "SimulatedPath",
    "StateSpaceModel",
    "StochasticVolatility",
    "data_plate",
    "mlp",
]
