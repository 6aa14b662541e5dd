"""posterity.models: Pyro programs that generate data, and nothing else."""

from .bnn import BayesianLogisticRegression, BayesianMLP
from .nn import mlp
from .plates import data_plate
from .sbn import SigmoidBeliefNet, helmholtz_machine
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
    "SigmoidBeliefNet",
    "SimulatedPath",
    "StateSpaceModel",
    "StochasticVolatility",
    "data_plate",
    "helmholtz_machine",
    "mlp",
]
