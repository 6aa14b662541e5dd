"""Real time series shipped with the package (no download)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor


def gbp_usd_rates() -> tuple[np.ndarray, np.ndarray]:
    """``(dates, rates)``: 751 daily GBP/USD rates (GBP per USD), 1997-01-02 to 1999-12-31.

    Source: the PACIFIC Exchange Rate Service, (C) Prof. Werner Antweiler, University of
    British Columbia, as distributed in ``particles`` (Chopin & Papaspiliopoulos 2020, MIT
    licence; ``particles.datasets.GBP_vs_USD_9798``), the series of the stochastic
    volatility examples there. Stored in ``posterity/datasets/data/gbp_usd_9798.csv``.

    Example:
        >>> dates, rates = gbp_usd_rates()
        >>> str(dates[0]), float(rates[0])
        ('1997-01-02', 0.59296)
    """
    with resources.as_file(resources.files(__package__) / "data" / "gbp_usd_9798.csv") as path:
        table = np.loadtxt(path, delimiter=",", comments="#", skiprows=5, dtype=str)
    return table[:, 0].astype("datetime64[D]"), table[:, 1].astype(np.float64)


def gbp_usd(device: torch.device | str | None = None) -> Tensor:
    """Daily GBP/USD log-returns in percent, ``[750, 1]`` float32.

    ``100 * diff(log(rate))`` of :func:`gbp_usd_rates`: the values of
    ``particles.datasets.GBP_vs_USD_9798().data``, and the default series of
    ``posterity fit ssm``.

    Example:
        >>> ys = gbp_usd()
        >>> tuple(ys.shape), round(float(ys.std()), 2)
        ((750, 1), 0.47)
    """
    rates = gbp_usd_rates()[1]
    returns = 100.0 * np.diff(np.log(rates))
    return torch.as_tensor(returns, dtype=torch.float32, device=device)[:, None]
