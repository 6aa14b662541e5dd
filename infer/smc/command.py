"""``posterity fit ssm``: learn a state-space model on a series, then filter and smooth.

``posterity fit ssm --data gbp-usd --model sv --estimator ppg --steps 300 --out runs/sv``
learns the parameters by score ascent, runs a particle filter and particle Gibbs at the
learned values, and leaves ``report.html``, ``idata.nc`` and ``metrics.json`` in
``--out``. ``--data`` takes ``gbp-usd`` (daily GBP/USD log-returns of 1997-99 in percent,
shipped with the package: :func:`posterity.datasets.gbp_usd`) or a CSV file (header
optional; ``--columns`` picks the observed columns by index or header name, default all,
and the others may hold text such as dates; empty cells and ``nan`` are missing
observations). The learned parameters print as the model reads them (``phi``, not
``phi_raw``). ``--model`` takes ``sv`` (stochastic volatility, one column),
``lgssm`` (a linear-Gaussian model with ``--state-dim`` states) or ``rnn`` (the chaotic
recurrent network).
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch

from posterity.datasets import load_series
from posterity.models import ChaoticRNN, LinearGaussianSSM, StochasticVolatility
from posterity.models.ssm import StateSpaceModel

from ..command import (
    Command,
    Outcome,
    Run,
    UsageError,
    add_num_particles,
    divisible,
    integer,
    real,
    rounded,
)
from .filter import ParticleFilter
from .particle_gibbs import ParticleGibbs
from .score_ascent import ScoreAscent

MODELS = ("sv", "lgssm", "rnn")


def build_model(name: str, obs_dim: int, state_dim: int) -> StateSpaceModel:
    """The ``--model`` for ``obs_dim`` observed columns."""
    if name == "sv":
        if obs_dim != 1:
            raise UsageError("--model", f"sv observes one column, the data has {obs_dim} "
                                        f"(pick one with --columns)")
        return StochasticVolatility()
    if name == "lgssm":
        return LinearGaussianSSM(state_dim, obs_dim, C=torch.ones(obs_dim, state_dim) / state_dim)
    return ChaoticRNN(state_dim, obs_dim)


def _column(text: str) -> int | str:
    """A ``--columns`` entry: an index, or a name from the CSV's header."""
    try:
        return int(text)
    except ValueError:
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="gbp-usd", help="gbp-usd | path to a CSV")
    parser.add_argument("--columns", type=_column, nargs="*", default=None,
                        help="observed CSV columns, by index or header name (default all; "
                             "the others may hold text, such as dates)")
    parser.add_argument("--model", choices=MODELS, default="sv")
    parser.add_argument("--state-dim", type=integer(1), default=1, help="lgssm and rnn only")
    parser.add_argument("--estimator", choices=("paris", "ppg"), default="ppg",
                        help="score estimator of the parameter learning")
    parser.add_argument("--steps", type=integer(0), default=300,
                        help="score-ascent steps (0: no learning)")
    parser.add_argument("--time-budget", type=real(0), default=None,
                        help="stop the learning after this many seconds of updates")
    parser.add_argument("--lr", type=real(0), default=1e-2, help="learning rate (> 0)")
    add_num_particles(parser, 100, 2, "--particles",
                      help="particles for learning and particle Gibbs (--particles: old name)")
    parser.add_argument("--filter-particles", type=integer(2), default=1000)
    parser.add_argument("--iters", type=integer(1), default=200,
                        help="particle Gibbs sweeps per chain (the first fifth is burn-in)")
    parser.add_argument("--chains", type=integer(1), default=4,
                        help="particle Gibbs chains, in all (under torchrun split over the "
                             "processes)")


def check(args: argparse.Namespace) -> None:
    if args.steps:  # both estimators spread their particles over the processes
        divisible("--num-particles", args.num_particles)
    divisible("--filter-particles", args.filter_particles)
    divisible("--chains", args.chains)


def _learn(learner: ScoreAscent, ys: torch.Tensor, args: argparse.Namespace, run: Run):
    """Score ascent for ``--steps`` updates, checkpointed where the engine supports it."""
    accepted = inspect.signature(learner.fit).parameters
    # what happens after the learning may change on resume
    safe = ("steps", "filter_particles", "iters", "chains")
    options = {k: v for k, v in run.train_options(safe_keys=safe).items() if k in accepted}
    for name, value in (("seed", args.seed), ("time_budget", args.time_budget)):
        if name in accepted:
            options[name] = value
    return learner.fit(ys, num_steps=args.steps, **options)


def run(args: argparse.Namespace, run: Run) -> Outcome:
    ys = run.agreed(lambda: load_series(args.data, args.columns))
    missing = bool(torch.isnan(ys).any())
    ssm = run.agreed(lambda: build_model(args.model, ys.shape[1], args.state_dim))
    progress = False if args.quiet else None
    started = time.perf_counter()
    learning = None
    if args.steps:
        learner = ScoreAscent(ssm, estimator=args.estimator, num_particles=args.num_particles,
                              lr=args.lr, missing=missing, progress=progress)
        learning = _learn(learner, ys, args, run)
    learn_seconds = time.perf_counter() - started
    with torch.no_grad():
        filtered = ParticleFilter(ssm, args.filter_particles, missing=missing,
                                  progress=progress).run(ys)
        paths = ParticleGibbs(ssm, args.num_particles, missing=missing,
                              progress=progress).run(ys, args.iters, divisible("--chains",
                                                                               args.chains))
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
    shown = ", ".join(f"{name} {' '.join(rounded(v, 3) for v in values)}"
                      for name, values in readable_parameters(ssm).items())
    lines = [f"log-evidence at the learned parameters: {metrics['log_evidence']:.2f} "
             f"(N = {args.filter_particles}); T = {ys.shape[0]}, "
             f"{metrics['missing_steps']} missing",
             f"parameters: {shown}" + (f" after {args.steps} score-ascent steps in "
                                       f"{rounded(learn_seconds, 3)} s" if args.steps else "")]
    return Outcome(idata, metrics, f"{args.model} on {args.data}", lines)


def readable_parameters(ssm: torch.nn.Module) -> dict[str, list[float]]:
    """The parameters as the model reads them: a raw ``phi_raw`` or ``log_sigma`` is
    shown through the model's ``phi`` / ``sigma`` property when it has one.

    Example:
        >>> from posterity.models import StochasticVolatility
        >>> sorted(readable_parameters(StochasticVolatility()))
        ['mu', 'phi', 'sigma']
    """
    out = {}
    for name, value in ssm.named_parameters():
        for prefix, suffix in (("log_", ""), ("", "_raw")):
            base = name[len(prefix): len(name) - len(suffix)]
            if (name.startswith(prefix) and name.endswith(suffix) and base != name
                    and isinstance(getattr(type(ssm), base, None), property)):
                name, value = base, getattr(ssm, base)
                break
        out[name] = value.detach().flatten().tolist()
    return out


COMMAND = Command(
    name="ssm",
    help="state-space model: learn by score ascent, filter, smooth",
    description=__doc__.split("\n\n")[0],
    add_arguments=add_arguments,
    check=check,
    run=run,
    flags={"num_particles": "--num-particles", "num_steps": "--steps", "columns": "--columns",
           "state_dim": "--state-dim", "num_chains": "--chains", "num_iters": "--iters",
           "time_budget": "--time-budget"},
    demo=["--data", "gbp-usd", "--model", "sv", "--estimator", "paris", "--steps", "60",
          "--lr", "0.05", "--num-particles", "50", "--filter-particles", "500", "--iters",
          "100", "--chains", "2"],
    distributes="the particle filter's --filter-particles are spread over the processes "
                "(normalizing constants reduced, resampling global: the law of one process "
                "with the same N); score ascent spreads its --num-particles the same way, "
                "with either estimator (PPG's sweeps resample globally and draw one path "
                "for all processes); the --chains particle Gibbs chains are split over the "
                "processes. --filter-particles, --chains and --num-particles must be "
                "divisible by the number of processes.",
)
