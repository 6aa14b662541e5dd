"""``posterity fit bnn``: sample a Bayesian MLP with an SG-MCMC kernel.

``posterity fit bnn --data concrete --kernel sghmc --out runs/bnn`` samples the weights
through ``pyro.infer.MCMC`` (minibatches from the model's subsampled data plate) and
leaves ``report.html``, ``idata.nc`` and ``metrics.json`` in ``--out``. ``--data`` takes
``concrete`` (embedded: :func:`posterity.datasets.concrete`) or a CSV (header optional;
``--target`` picks the column, default the last). Inputs and targets are standardized
on the training split; metrics are reported in the target's own units.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch
from pyro.infer import MCMC

from posterity.datasets import load_table, standardize
from posterity.models import BayesianMLP

from .. import distributed
from ..command import Command, Outcome, Run, UsageError, divisible, integer, real, rounded
from ..inference_data import to_inference_data
from ..progress import progress_enabled
from .kernels import SGHMC, SGLD, PreconditionedSGLD
from .predictive import classification_metrics, pointwise_predictive, regression_metrics
from .schedules import CyclicalSchedule

KERNELS = ("sgld", "psgld", "sghmc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="concrete", help="concrete | path to a CSV")
    parser.add_argument("--target", type=integer(), default=-1,
                        help="target column, a Python index (default -1: the last)")
    parser.add_argument("--classes", type=integer(2), default=None,
                        help="number of classes: a categorical likelihood (default: regression)")
    parser.add_argument("--hidden", type=integer(1), nargs="*", default=[50])
    parser.add_argument("--kernel", choices=KERNELS, default="sghmc")
    parser.add_argument("--step-size", type=_step_size, default=None,
                        help="peak step size (default: 2e-3 for sgld and sghmc, 5e-5 for "
                             "psgld, whose RMSprop preconditioner follows Li et al. 2016), "
                             "or 'auto': a constant step measured per chain during --warmup "
                             "(the kernels' default in Python; see docs/families/sgmcmc.md)")
    parser.add_argument("--friction", type=real(0), default=None,
                        help="sghmc only (default 10; with --step-size auto, the measured "
                             "critical friction)")
    parser.add_argument("--temperature", type=real(0), default=1.0)
    parser.add_argument("--cycles", type=integer(0), default=None,
                        help="cycles of the cyclical step-size schedule (0: constant; "
                             "default 4, and 0 with --step-size auto)")
    parser.add_argument("--warmup", type=integer(0), default=None,
                        help="warm-up draws per chain, each as many updates as a sample, "
                             "inside --steps and discarded (default 0; 20 with --step-size "
                             "auto, which measures the step during them)")
    parser.add_argument("--exploration-ratio", type=real(0, 1, closed="low"), default=0.25,
                        help="share of each cycle spent exploring, in [0, 1)")
    parser.add_argument("--steps", type=integer(1), default=20_000,
                        help="updates per chain (sampling ones at least --samples)")
    parser.add_argument("--samples", type=integer(1), default=200, help="samples per chain")
    parser.add_argument("--chains", type=integer(1), default=2,
                        help="chains in all (under torchrun split over the processes)")
    parser.add_argument("--batch-size", type=integer(1), default=32)
    parser.add_argument("--test-fraction", type=real(0, 1), default=0.1,
                        help="share of the rows held out for the test metrics, in (0, 1)")


def _step_size(text: str) -> float | str:
    return "auto" if text.strip().lower() == "auto" else real(0)(text)


def _schedule(args: argparse.Namespace) -> CyclicalSchedule | float | str:
    return (CyclicalSchedule(args.step_size, args.cycles, args.steps, args.exploration_ratio)
            if args.cycles else args.step_size)


def _sampling_updates(args: argparse.Namespace) -> int:
    """The updates of ``--steps`` outside the exploration stages, counted on the schedule."""
    schedule = _schedule(args)
    if not isinstance(schedule, CyclicalSchedule):
        return args.steps
    return sum(not schedule.is_exploration(t) for t in range(args.steps))


DEFAULT_STEP_SIZE = {"sgld": 2e-3, "sghmc": 2e-3, "psgld": 5e-5}
DEFAULT_CYCLES, DEFAULT_FRICTION, AUTO_WARMUP = 4, 10.0, 20


def check(args: argparse.Namespace) -> None:
    auto = args.step_size == "auto"
    if args.step_size is None:
        args.step_size = DEFAULT_STEP_SIZE[args.kernel]
    if args.cycles is None:
        args.cycles = 0 if auto else DEFAULT_CYCLES
    if args.friction is None:
        args.friction = "auto" if auto else DEFAULT_FRICTION
    if args.warmup is None:
        args.warmup = AUTO_WARMUP if auto else 0
    if auto and args.cycles:
        raise UsageError("--cycles", f"must be 0 with --step-size auto (a cyclical schedule "
                                     f"sets its own steps), got {args.cycles}")
    if auto and args.warmup < 2:
        raise UsageError("--warmup", f"must be >= 2 with --step-size auto, which measures the "
                                     f"step during the warm-up, got {args.warmup}")
    if args.cycles and args.steps < args.cycles:
        raise UsageError("--steps", f"must be >= --cycles ({args.cycles}), got {args.steps}")
    sampling = _sampling_updates(args)
    if sampling < args.samples + args.warmup:
        phase = (f" ({sampling} of them sampling, after --exploration-ratio "
                 f"{args.exploration_ratio:g})" if args.cycles else "")
        warmup = f" and --warmup {args.warmup}" if args.warmup else ""
        raise UsageError("--steps", f"{args.steps}{phase} cannot give --samples {args.samples}"
                                    f"{warmup}: each draw needs its own update; raise --steps "
                                    f"or lower --samples")
    divisible("--chains", args.chains)
    if (args.kernel == "sghmc" and not auto and args.friction != "auto"
            and args.step_size * args.friction >= 1):
        raise UsageError("--step-size", f"times --friction must be < 1 for --kernel sghmc, got "
                                        f"{args.step_size:g} * {args.friction:g}")


def _prepare(args: argparse.Namespace):
    """The data, checked and split, the inputs and targets standardized on the training
    rows: ``X, train, test`` (row indices), ``X_train, X_test, y_train, y_test, y_scale``."""
    X, y = load_table(args.data, args.target)
    if args.classes is not None:
        labels = torch.arange(args.classes, dtype=y.dtype)
        if not bool(torch.isin(y, labels).all()):
            odd = y[~torch.isin(y, labels)][:3].tolist()
            raise UsageError("--classes", f"{args.classes} needs labels 0..{args.classes - 1} "
                                          f"in the target column of {args.data}; found "
                                          f"{', '.join(f'{v:g}' for v in odd)}")
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(args.seed))
    cut = int((1 - args.test_fraction) * len(X))
    if cut < 2 or cut == len(X):
        raise UsageError("--test-fraction", f"{args.test_fraction:g} of {len(X)} rows leaves "
                                            f"{cut} for training and {len(X) - cut} for testing; "
                                            f"each needs at least {2 if cut < 2 else 1}")
    train, test = order[:cut], order[cut:]
    X_train, X_test = standardize(X[train], X[test])
    if args.classes is not None:
        y_train, y_test = y[train].long(), y[test].long()
        y_scale = 1.0
    else:
        y_mean, y_scale = y[train].mean(), float(y[train].std())
        y_train, y_test = (y[train] - y_mean) / y_scale, (y[test] - y_mean) / y_scale
    return X, train, test, X_train, X_test, y_train, y_test, y_scale


def run(args: argparse.Namespace, run: Run) -> Outcome:
    X, train, test, X_train, X_test, y_train, y_test, y_scale = run.agreed(
        lambda: _prepare(args))
    classification = args.classes is not None
    model = BayesianMLP(
        X.shape[1], tuple(args.hidden), args.classes or 1,
        likelihood="categorical" if classification else "gaussian",
        subsample_size=min(args.batch_size, len(train)),
    )
    schedule = _schedule(args)
    thin = max(1, _sampling_updates(args) // (args.samples + args.warmup))
    options = {"thin": thin, "temperature": args.temperature}
    kernel = {
        "sgld": lambda: SGLD(model, schedule, **options),
        "psgld": lambda: PreconditionedSGLD(model, schedule, **options),
        "sghmc": lambda: SGHMC(model, schedule, friction=args.friction, **options),
    }[args.kernel]()
    # under torchrun each process runs its share of the chains on a random stream of its
    # own (the kernels see the rank); the report gathers every process's chains
    with warnings.catch_warnings():  # Pyro's note (at MCMC()) that chains run in turn
        warnings.filterwarnings("ignore", message="num_chains=.*available_cpu")
        # --samples x thin fills --steps up to fewer than --samples updates, by design
        warnings.filterwarnings("ignore", message=".*was built for total_steps.*stopped after")
        mcmc = MCMC(kernel, num_samples=args.samples, warmup_steps=args.warmup,
                    num_chains=divisible("--chains", args.chains),
                    disable_progbar=not progress_enabled(False if args.quiet else None))
        started = time.perf_counter()
        mcmc.run(X_train, y_train)
    seconds = time.perf_counter() - started
    samples = {name: distributed.all_gather(value)  # every process's chains
               for name, value in sorted(mcmc.get_samples(group_by_chain=True).items())}
    predictive = pointwise_predictive(model, samples, X_test, y_test)
    if classification:
        metrics = classification_metrics(predictive, y_test)
        shown = (f"test accuracy {metrics['accuracy']:.3f}, NLL {metrics['nll']:.3f}, "
                 f"ECE {metrics['ece']:.3f}")
    else:
        metrics = regression_metrics(predictive, y_test)
        metrics = {"rmse": metrics["rmse"] * y_scale,
                   "log_likelihood": metrics["log_likelihood"] - math.log(y_scale)}
        shown = (f"test RMSE {rounded(metrics['rmse'], 3)} (target units), log-likelihood "
                 f"{metrics['log_likelihood']:.3f} per point")
    metrics.update(train_points=len(train), test_points=len(test), seconds=seconds,
                   thin=thin, updates=kernel.step_indices(args.samples, args.warmup)[-1] + 1,
                   kernel=args.kernel)
    idata = to_inference_data(mcmc, X_test, y_test)
    if args.step_size == "auto":  # each chain's measured step
        metrics["step_size"] = idata.sample_stats["step_size"].values[:, 0].tolist()
    idata.posterior.attrs.update(dict(metrics))
    line = (f"{shown}; {len(train)} train / {len(test)} test points, {args.chains} chain(s) of "
            f"{args.samples} samples in {rounded(seconds, 3)} s")
    return Outcome(idata, metrics, f"Bayesian MLP ({args.kernel}) on {args.data}", [line])


COMMAND = Command(
    name="bnn",
    help="Bayesian MLP sampled by SG-MCMC",
    description=__doc__.split("\n\n")[0],
    add_arguments=add_arguments,
    check=check,
    run=run,
    flags={"subsample_size": "--batch-size", "step_size": "--step-size", "target": "--target",
           "initial_step_size": "--step-size", "friction": "--friction",
           "temperature": "--temperature", "num_cycles": "--cycles", "total_steps": "--steps",
           "exploration_ratio": "--exploration-ratio", "num_samples": "--samples",
           "num_chains": "--chains", "thin": "--samples"},
    demo=["--data", "concrete", "--kernel", "sghmc", "--hidden", "50", "--steps", "4000",
          "--samples", "100", "--chains", "2", "--cycles", "4"],
    distributes="the --chains chains are split over the processes (--chains must be "
                "divisible by their number), each on a random stream of its own; every "
                "process sees all the training data, and the report gathers the chains "
                "of every process (R-hat compares chains from different processes).",
)
