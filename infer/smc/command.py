"""``posterity fit ssm``: learn a state-space model on a series, then filter and smooth.

``posterity fit ssm --data gbp-usd --model sv --estimator ppg --steps 300 --out runs/sv``
learns the parameters by score ascent, runs a particle filter and particle Gibbs at the
learned values, and writes ``report.html``, ``idata.nc`` and ``metrics.json`` into
``--out``. ``--data`` takes ``gbp-usd`` (the daily GBP/USD log-returns of 1997-98 that
ship with ``particles``, in percent) or a CSV file (header optional; ``--columns`` picks
the observed columns, default all; empty cells and ``nan`` are missing observations).
``--model`` takes ``sv`` (stochastic volatility, one column), ``lgssm`` (a linear-Gaussian
model with ``--state-dim`` states) or ``rnn`` (the chaotic recurrent network).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from posterity.models import ChaoticRNN, LinearGaussianSSM, StochasticVolatility
from posterity.models.ssm import StateSpaceModel

from ..report import report
from .filter import ParticleFilter
from .particle_gibbs import ParticleGibbs
from .score_ascent import ScoreAscent


def load_series(spec: str, columns: list[int] | None = None) -> torch.Tensor:
    """``[T, obs_dim]`` observations for a ``--data`` value (NaN where missing)."""
    if spec == "gbp-usd":
        from particles import datasets

        return torch.as_tensor(datasets.GBP_vs_USD_9798().data, dtype=torch.float32)[:, None]
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--data: expected 'gbp-usd' or a CSV file, got {spec!r}")
    rows = path.read_text().splitlines()
    while rows and not rows[-1].strip():
        rows.pop()

    def parse(line: str) -> list[float]:
        return [float(cell) if cell.strip() else float("nan") for cell in line.split(",")]

    try:
        parse(rows[0])
    except ValueError:  # a header
        rows = rows[1:]
    try:
        table = np.array([parse(row) for row in rows], dtype=np.float64)
    except ValueError as error:
        raise SystemExit(f"--data {spec}: {error}") from None
    table = table.reshape(len(table), -1)
    if columns:
        table = table[:, columns]
    return torch.as_tensor(table, dtype=torch.float32)


def build_model(name: str, obs_dim: int, state_dim: int) -> StateSpaceModel:
    if name == "sv":
        if obs_dim != 1:
            raise SystemExit(f"--model sv observes one column, the data has {obs_dim}")
        return StochasticVolatility()
    if name == "lgssm":
        return LinearGaussianSSM(state_dim, obs_dim, C=torch.ones(obs_dim, state_dim) / state_dim)
    return ChaoticRNN(state_dim, obs_dim)


def fit_ssm(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    ys = load_series(args.data, args.columns)
    missing = bool(torch.isnan(ys).any())
    ssm = build_model(args.model, ys.shape[1], args.state_dim)
    started = time.perf_counter()
    learning = None
    if args.steps:
        learner = ScoreAscent(ssm, estimator=args.estimator, num_particles=args.particles,
                              lr=args.lr, missing=missing, progress=not args.quiet)
        learning = learner.fit(ys, num_steps=args.steps)
    learn_seconds = time.perf_counter() - started
    with torch.no_grad():
        filtered = ParticleFilter(ssm, args.filter_particles, missing=missing,
                                  progress=not args.quiet).run(ys)
        paths = ParticleGibbs(ssm, args.particles, missing=missing,
                              progress=not args.quiet).run(ys, args.iters, args.chains)
    idata = paths.to_inference_data(burn_in=args.iters // 5)
    idata.extend(filtered.to_inference_data())
    if learning is not None:
        idata.extend(learning.to_inference_data())
    parameters = {name: p.detach().flatten().tolist() for name, p in ssm.named_parameters()}
    metrics = {"log_evidence": float(filtered.log_evidence), "time_steps": ys.shape[0],
               "missing_steps": int(torch.isnan(ys).any(-1).sum()),
               "learn_seconds": learn_seconds, "parameters": parameters}
    idata.posterior.attrs.update(model=args.model, data=args.data,
                                 log_evidence=metrics["log_evidence"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(str(out / "idata.nc"), engine="h5netcdf")
    path = report(idata, out / "report.html", title=f"{args.model} on {args.data}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"log-evidence at the learned parameters: {metrics['log_evidence']:.3f} "
          f"(N = {args.filter_particles}); T = {ys.shape[0]}, {metrics['missing_steps']} missing")
    print(f"report: {path.resolve()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="gbp-usd", help="gbp-usd | path to a CSV")
    parser.add_argument("--columns", type=int, nargs="*", default=None,
                        help="observed CSV columns (default all)")
    parser.add_argument("--model", choices=("sv", "lgssm", "rnn"), default="sv")
    parser.add_argument("--state-dim", type=int, default=1, help="lgssm and rnn only")
    parser.add_argument("--estimator", choices=("paris", "ppg"), default="ppg")
    parser.add_argument("--steps", type=int, default=300, help="score-ascent steps (0: none)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--particles", type=int, default=100,
                        help="particles for learning and particle Gibbs")
    parser.add_argument("--filter-particles", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=200, help="particle Gibbs sweeps per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/ssm")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=fit_ssm)
