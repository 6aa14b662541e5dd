"""Small real data sets that ship inside the ``particles`` package (no download)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor


def _read(filename: str, **kwargs) -> np.ndarray:
    path = resources.files("particles") / "datasets" / filename
    with resources.as_file(path) as file:
        return np.loadtxt(file, delimiter=",", **kwargs)


def concrete() -> tuple[Tensor, Tensor]:
    """UCI concrete compressive strength (Yeh 1998): ``X`` ``[1030, 8]``, ``y`` ``[1030]``
    in MPa, unstandardized."""
    data = _read("concrete.csv", skiprows=1)
    return (torch.as_tensor(data[:, :-1], dtype=torch.float32),
            torch.as_tensor(data[:, -1], dtype=torch.float32))


def pima() -> tuple[Tensor, Tensor]:
    """Pima Indians diabetes (Smith et al. 1988): ``X`` ``[768, 8]``, binary ``y``."""
    data = _read("pima-indians-diabetes.data")
    return (torch.as_tensor(data[:, :-1], dtype=torch.float32),
            torch.as_tensor(data[:, -1], dtype=torch.float32))


def standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Scale every tensor by the mean and standard deviation of ``train``'s columns."""
    mean, std = train.mean(0), train.std(0).clamp(min=1e-8)
    return tuple((t - mean) / std for t in (train, *others))
