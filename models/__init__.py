"""posterity.models: Pyro programs that generate data, and nothing else."""

from .nn import mlp
from .plates import data_plate
from .vae import VAE, LinearGaussianVAE

__all__ = ["VAE", "LinearGaussianVAE", "data_plate", "mlp"]
