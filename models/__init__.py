"""posterity.models: Pyro programs that generate data, and nothing else."""

from posterity.layers import data_plate, mlp

from .bnn import BayesianLogisticRegression, BayesianMLP
from .sbn import SigmoidBeliefNet
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
    "mlp",
]


def __getattr__(name: str):
    if name == "helmholtz_machine":
        raise AttributeError(
            "helmholtz_machine builds a model and its guide, so it lives where both can be "
            "imported: use `from posterity.infer.wake_sleep import helmholtz_machine`"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
