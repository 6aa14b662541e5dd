"""Command line: ``posterity fit vae|bnn|ssm|sbn ...`` and ``posterity demo``.

``posterity fit vae --data mnist --objective iwae -k 5 --epochs 10 --out runs/vae``
trains, evaluates and writes ``report.html``, ``idata.nc``, ``metrics.json`` and
``checkpoint.pt`` into ``--out``. ``--data`` takes ``digits`` (embedded, no download),
``mnist`` (binarized MNIST, see :func:`posterity.datasets.binarized_mnist`) or a file:
``.npz`` with ``train``/``valid``/``test`` arrays, or one ``.npy``/``.csv`` array that is
split 80/10/10. ``--objective multi_rate --beta-range 0.01 10`` trains one Multi-Rate
VAE and writes its rate-distortion curve into the report and ``metrics.json``.

``posterity fit bnn --data concrete --kernel sghmc --out runs/bnn`` samples a Bayesian
MLP with an SG-MCMC kernel through ``pyro.infer.MCMC``. ``--data`` takes ``concrete``
(embedded) or a CSV (header optional; ``--target`` picks the column, default the
last). Inputs and targets are standardized on the training split; metrics are reported
in the target's own units.

``posterity fit ssm --data gbp-usd --model sv --out runs/sv`` learns a state-space model
by score ascent, then filters and smooths it (see :mod:`posterity.infer.smc.command`).

``posterity fit sbn --data mnist --algorithm nrws --out runs/sbn`` trains a sigmoid belief
net by (natural) reweighted wake-sleep or a (natural) bidirectional Helmholtz machine
(see :mod:`posterity.infer.sbn_command`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from posterity.datasets import binarized_digits, binarized_mnist
from posterity.guides import GaussianEncoder
from posterity.models import VAE

from .amortized.evaluate import log_likelihood, rate_distortion
from .amortized.inference_data import rate_distortion_dataset
from .amortized.vi import OBJECTIVES, AmortizedVI
from .inference_data import to_inference_data
from .report import report
from .smc.command import add_arguments as ssm_arguments
from .wake_sleep.command import add_arguments as sbn_arguments


def load_data(spec: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train, valid, test)`` for a ``--data`` value."""
    if spec == "digits":
        return binarized_digits()
    if spec == "mnist":
        return binarized_mnist()
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--data: expected 'digits', 'mnist' or a file, got {spec!r}")
    if path.suffix == ".npz":
        with np.load(path) as archive:
            if archive["train"].dtype == np.uint8 and archive["train"].shape[1] == 98:
                return binarized_mnist(path)
            return tuple(torch.as_tensor(archive[k], dtype=torch.float32) for k in
                         ("train", "valid", "test"))
    array = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",")
    data = torch.as_tensor(array, dtype=torch.float32)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    data = data[order]
    n_train, n_valid = int(0.8 * len(data)), int(0.1 * len(data))
    return data[:n_train], data[n_train : n_train + n_valid], data[n_train + n_valid :]


def _fit_vae(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    train, valid, test = load_data(args.data)
    likelihood = args.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if bool(((train == 0) | (train == 1)).all()) else "gaussian"
    x_dim = train.shape[1]
    hidden = tuple(args.hidden)
    multi_rate = args.objective == "multi_rate"
    rate_kwargs = {"multi_rate": True, "beta_range": tuple(args.beta_range)} if multi_rate else {}
    model = VAE(x_dim, args.z_dim, hidden, likelihood=likelihood, activation=args.activation,
                **rate_kwargs)
    guide = GaussianEncoder(x_dim, args.z_dim, hidden, activation=args.activation,
                            **rate_kwargs)
    vi = AmortizedVI(
        model, guide, objective=args.objective, num_particles=args.num_particles,
        lr=args.lr, beta=args.beta,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    resumed = checkpoint.exists() and not args.fresh
    started = time.perf_counter()
    vi.fit(
        train, epochs=args.epochs, batch_size=args.batch_size, valid=valid,
        patience=args.patience, checkpoint=checkpoint, resume=not args.fresh, seed=args.seed,
        progress=not args.quiet,
    )
    train_seconds = time.perf_counter() - started
    test_eval = test[: args.eval_points] if args.eval_points else test
    ll = log_likelihood(model, guide, test_eval, args.eval_samples, progress=not args.quiet)
    curve = rate_distortion(model, guide, test_eval)
    idata = to_inference_data(vi, test_eval[: args.diagnostic_points])
    if multi_rate:  # the curve of the whole evaluation set, not only the diagnostic points
        low, high = args.beta_range
        betas = torch.logspace(np.log10(low), np.log10(high), args.num_betas)
        idata.rate_distortion = rate_distortion_dataset(rate_distortion(model, guide,
                                                                         test_eval, betas))
    idata.posterior.attrs.update(
        data=args.data, test_log_likelihood=float(ll.mean()), eval_samples=args.eval_samples,
        rate=float(curve.rate), distortion=float(curve.distortion),
    )
    idata.to_netcdf(str(out / "idata.nc"), engine="h5netcdf")
    path = report(idata, out / "report.html", title=f"VAE ({args.objective}) on {args.data}")
    metrics = {
        "test_log_likelihood": float(ll.mean()),
        "test_points": int(test_eval.shape[0]),
        "eval_samples": args.eval_samples,
        "rate": float(curve.rate),
        "distortion": float(curve.distortion),
        "epochs": vi.history.num_epochs,
        "train_seconds": train_seconds,
    }
    if multi_rate:
        metrics["rate_distortion"] = {
            "beta": idata.rate_distortion["beta"].values.tolist(),
            "rate": idata.rate_distortion["rate"].values.tolist(),
            "distortion": idata.rate_distortion["distortion"].values.tolist(),
        }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(
        f"test log p(x) = {metrics['test_log_likelihood']:.3f} nats "
        f"(S={args.eval_samples}, {metrics['test_points']} points); rate "
        f"{metrics['rate']:.2f}, distortion {metrics['distortion']:.2f} nats; "
        f"{metrics['epochs']} epochs"
        + (f" (resumed from {checkpoint}; --fresh starts over)" if resumed
           else f" trained in {train_seconds:.1f} s")
    )
    print(f"report: {path.resolve()}")
    return 0


def load_table(spec: str, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` from ``concrete`` or a CSV file."""
    if spec == "concrete":
        from posterity.datasets import concrete

        return concrete()
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--data: expected 'concrete' or a CSV file, got {spec!r}")
    with path.open() as handle:
        first = handle.readline()
    try:
        [float(v) for v in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1
    table = torch.as_tensor(np.loadtxt(path, delimiter=",", skiprows=skip), dtype=torch.float32)
    columns = list(range(table.shape[1]))
    target = columns[target]
    return table[:, [c for c in columns if c != target]], table[:, target]


def _fit_bnn(args: argparse.Namespace) -> int:
    import math

    from pyro.infer import MCMC

    from posterity.datasets import standardize
    from posterity.models import BayesianMLP

    from .sgmcmc import SGHMC, SGLD, CyclicalSchedule, PreconditionedSGLD
    from .sgmcmc.predictive import (
        classification_metrics,
        pointwise_predictive,
        regression_metrics,
    )

    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    X, y = load_table(args.data, args.target)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(args.seed))
    cut = int((1 - args.test_fraction) * len(X))
    train, test = order[:cut], order[cut:]
    X_train, X_test = standardize(X[train], X[test])
    classification = args.classes is not None
    if classification:
        y_train, y_test = y[train].long(), y[test].long()
        y_scale = 1.0
    else:
        y_mean, y_scale = y[train].mean(), float(y[train].std())
        y_train, y_test = (y[train] - y_mean) / y_scale, (y[test] - y_mean) / y_scale
    model = BayesianMLP(
        X.shape[1], tuple(args.hidden), args.classes or 1,
        likelihood="categorical" if classification else "gaussian",
        subsample_size=min(args.batch_size, len(train)),
    )
    steps = args.steps
    schedule = (CyclicalSchedule(args.step_size, args.cycles, steps, args.exploration_ratio)
                if args.cycles else args.step_size)
    sampling_updates = steps * (1 - (args.exploration_ratio if args.cycles else 0.0))
    thin = max(1, int(sampling_updates // args.samples))
    kernels = {
        "sgld": lambda: SGLD(model, schedule, thin=thin, temperature=args.temperature),
        "psgld": lambda: PreconditionedSGLD(model, schedule, thin=thin,
                                            temperature=args.temperature),
        "sghmc": lambda: SGHMC(model, schedule, friction=args.friction, thin=thin,
                               temperature=args.temperature),
    }
    mcmc = MCMC(kernels[args.kernel](), num_samples=args.samples, warmup_steps=0,
                num_chains=args.chains, disable_progbar=args.quiet)
    started = time.perf_counter()
    mcmc.run(X_train, y_train)
    seconds = time.perf_counter() - started
    samples = mcmc.get_samples(group_by_chain=True)
    predictive = pointwise_predictive(model, samples, X_test, y_test)
    if classification:
        metrics = classification_metrics(predictive, y_test)
    else:
        metrics = regression_metrics(predictive, y_test)
        metrics = {"rmse": metrics["rmse"] * y_scale,
                   "log_likelihood": metrics["log_likelihood"] - math.log(y_scale)}
    metrics.update(train_points=len(train), test_points=len(test), seconds=seconds,
                   thin=thin, kernel=args.kernel)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    idata = to_inference_data(mcmc, X_test, y_test)
    idata.posterior.attrs.update({k: v for k, v in metrics.items()})
    idata.to_netcdf(str(out / "idata.nc"), engine="h5netcdf")
    path = report(idata, out / "report.html", title=f"Bayesian MLP ({args.kernel}) on {args.data}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(f"test metrics: {shown}")
    print(f"report: {path.resolve()}")
    return 0


def _bnn_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="concrete", help="concrete | path to a CSV")
    parser.add_argument("--target", type=int, default=-1, help="target column (default last)")
    parser.add_argument("--classes", type=int, default=None,
                        help="number of classes: a categorical likelihood (default: regression)")
    parser.add_argument("--hidden", type=int, nargs="*", default=[50])
    parser.add_argument("--kernel", choices=("sgld", "psgld", "sghmc"), default="sghmc")
    parser.add_argument("--step-size", type=float, default=2e-3)
    parser.add_argument("--friction", type=float, default=10.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--cycles", type=int, default=4, help="cyclical schedule (0: constant)")
    parser.add_argument("--exploration-ratio", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200, help="samples per chain")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bnn")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_fit_bnn)


def _vae_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    parser.add_argument("--data", default="digits", help="digits | mnist | path to .npz/.npy/.csv")
    parser.add_argument("--objective", choices=OBJECTIVES, default="iwae")
    parser.add_argument("-k", "--num-particles", type=int, default=5)
    parser.add_argument("--beta", type=float, default=1.0, help="KL weight for --objective beta")
    parser.add_argument("--beta-range", type=float, nargs=2, default=[0.01, 10.0],
                        metavar=("LOW", "HIGH"), help="β range of --objective multi_rate")
    parser.add_argument("--num-betas", type=int, default=20,
                        help="β grid of the rate-distortion curve (multi_rate)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="*", default=[200, 200])
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--likelihood", choices=("auto", "bernoulli", "gaussian"), default="auto")
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-points", type=int, default=None, help="first N test points")
    parser.add_argument("--diagnostic-points", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/vae")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore a checkpoint in --out instead of resuming from it")
    parser.set_defaults(func=_fit_vae, **defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posterity", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="train a model and write a report")
    models = fit.add_subparsers(dest="model", required=True)
    _vae_arguments(models.add_parser("vae", help="variational autoencoder"))
    _bnn_arguments(models.add_parser("bnn", help="Bayesian MLP sampled by SG-MCMC"))
    ssm_arguments(models.add_parser("ssm", help="state-space model: learn, filter, smooth"))
    sbn_arguments(models.add_parser("sbn", help="sigmoid belief net trained by wake-sleep"))
    demo = commands.add_parser(
        "demo", help="the main job on embedded data: an IWAE on binarized digits"
    )
    _vae_arguments(
        demo, data="digits", z_dim=8, hidden=[128], epochs=150, batch_size=50,
        lr=3e-3, eval_samples=2000, out="demo_out",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
