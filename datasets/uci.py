"""Small real tables: UCI concrete (shipped with the package) and Pima (from ``particles``)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor


def concrete() -> tuple[Tensor, Tensor]:
    """UCI concrete compressive strength (Yeh 1998, CC BY 4.0): ``X`` ``[1030, 8]`` (mixture
    components in kg/m^3 and age in days), ``y`` ``[1030]`` in MPa, unstandardized.

    Shipped as ``posterity/datasets/data/concrete.csv`` (the copy in ``particles``).

    Example:
        >>> X, y = concrete()
        >>> tuple(X.shape), tuple(y.shape)
        ((1030, 8), (1030,))
    """
    with resources.as_file(resources.files(__package__) / "data" / "concrete.csv") as path:
        data = np.loadtxt(path, delimiter=",", skiprows=1)
    return (torch.as_tensor(data[:, :-1], dtype=torch.float32),
            torch.as_tensor(data[:, -1], dtype=torch.float32))


def pima() -> tuple[Tensor, Tensor]:
    """Pima Indians diabetes (Smith et al. 1988): ``X`` ``[768, 8]``, binary ``y``.

    Read from the ``particles`` package (the ``test`` and ``bench`` extras install it).

    Raises:
        ModuleNotFoundError: without ``particles``, saying how to install it.
    """
    try:
        source = resources.files("particles") / "datasets" / "pima-indians-diabetes.data"
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "pima() reads the data shipped with the 'particles' package: "
            "pip install 'posterity[test]' (or pip install particles)"
        ) from None
    with resources.as_file(source) as path:
        data = np.loadtxt(path, delimiter=",")
    return (torch.as_tensor(data[:, :-1], dtype=torch.float32),
            torch.as_tensor(data[:, -1], dtype=torch.float32))


def standardize(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Scale every tensor by the mean and standard deviation of ``train``'s columns.

    Example:
        >>> a, b = standardize(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0]]))
        >>> b.tolist()
        [[0.0]]
    """
    mean, std = train.mean(0), train.std(0).clamp(min=1e-8)
    return tuple((t - mean) / std for t in (train, *others))
