"""Regenerate tests/reference/pima_nuts.json: the NUTS ground truth for Bayesian logistic
regression on the standardized Pima data (prior N(0, 1) on every coefficient).

Run from the repository root: ``python tests/reference/make_nuts_pima.py``.
"""

import json
from pathlib import Path

import arviz as az
import pyro
import torch
from pyro.infer import MCMC, NUTS

from posterity.datasets import pima, standardize
from posterity.models import BayesianLogisticRegression

if __name__ == "__main__":
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    X, y = pima()
    (X,) = standardize(X)
    mcmc = MCMC(NUTS(BayesianLogisticRegression(8)), num_samples=2000, warmup_steps=1000,
                num_chains=1, disable_progbar=True)
    mcmc.run(X, y)
    samples = mcmc.get_samples()
    draws = torch.cat([samples["weight"], samples["bias"][:, None]], 1)  # [S, 9]
    ess = [float(az.ess(draws[:, j].numpy()[None])) for j in range(draws.shape[1])]
    reference = {"mean": draws.mean(0).tolist(), "sd": draws.std(0).tolist(), "ess": ess,
                 "num_samples": draws.shape[0], "names": [f"weight[{j}]" for j in range(8)]
                 + ["bias"]}
    path = Path(__file__).with_name("pima_nuts.json")
    path.write_text(json.dumps(reference, indent=2))
    print(path, reference["mean"], min(ess))
