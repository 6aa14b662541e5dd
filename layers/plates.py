"""The data plate that every posterity program puts its data points in."""

from __future__ import annotations

import pyro
import torch
from torch import Tensor


def data_plate(x: Tensor, num_data: int | None = None) -> pyro.plate:
    """``pyro.plate("data", ...)`` over the rows of the minibatch ``x``.

    With ``num_data`` (the size of the whole data set) the plate scales log densities
    by ``num_data / len(x)``, as Pyro's subsampling does, so ``SVI`` sees an unbiased
    full-data ELBO.
    """
    batch = x.shape[0]
    if num_data is None or num_data == batch:
        return pyro.plate("data", batch)
    return pyro.plate("data", num_data, subsample=torch.arange(batch, device=x.device))


def check_binary(x: Tensor, name: str) -> None:
    if not ((x == 0) | (x == 1)).all():
        values = x[(x != 0) & (x != 1)][:3].tolist()
        raise ValueError(
            f"{name} must be binary (0 or 1) for a Bernoulli likelihood; found values "
            f"such as {values}. Binarize it, or use likelihood='gaussian'"
        )


def check_matrix(x: Tensor, width: int, name: str) -> None:
    """``x`` must be ``[N, width]``: one row of ``width`` features per data point."""
    if x.dim() != 2:
        raise ValueError(
            f"{name} must have shape [N, D] with D = {width}, got {tuple(x.shape)}"
        )
    check_width(x, width, name)


def check_width(x: Tensor, width: int, name: str) -> None:
    if x.dim() < 1 or x.shape[-1] != width:
        raise ValueError(
            f"{name} must have {width} features in its last dimension, "
            f"got shape {tuple(x.shape)}"
        )
