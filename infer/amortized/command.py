"""``posterity fit vae``: train a variational autoencoder by amortized VI, then evaluate it.

``posterity fit vae --data mnist --objective iwae -k 5 --epochs 10 --out runs/vae``
trains, estimates the test log-likelihood by importance sampling, and leaves
``report.html``, ``idata.nc``, ``metrics.json`` and ``checkpoint.pt`` in ``--out``.
``--data`` takes ``digits`` (embedded, no download), ``mnist`` (binarized MNIST, see
:func:`posterity.datasets.binarized_mnist`) or a file: ``.npz`` with
``train``/``valid``/``test`` arrays, or one ``.npy``/``.csv`` array that is split
80/10/10. ``--objective multi_rate --beta-range 0.01 10`` trains one Multi-Rate VAE and
writes its rate-distortion curve into the report and ``metrics.json``, whose
``train_seconds`` is the time of the run's updates over every call that trained it
(validation and evaluation excluded).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from posterity.datasets import load_matrix
from posterity.guides import GaussianEncoder
from posterity.layers.gated import (
    DEFAULT_BETA_EXTENSION,
    DEFAULT_RESPONSE_DEGREE,
    DEFAULT_RESPONSE_RANK,
    RESPONSE_DEGREES,
)
from posterity.layers.networks import ACTIVATIONS
from posterity.models import VAE

from ..command import (
    Command,
    Outcome,
    Run,
    UsageError,
    add_num_particles,
    at_least_one_each,
    evaluate_rows,
    integer,
    real,
    rounded,
)
from ..inference_data import to_inference_data
from .betas import check_beta_distribution
from .evaluate import log_likelihood, rate_distortion
from .inference_data import rate_distortion_dataset
from .vi import (
    DEFAULT_BETA_DISTRIBUTION,
    DEFAULT_GATE_LR_MULTIPLIER,
    OBJECTIVES,
    AmortizedVI,
)


def beta_distribution(text: str) -> str | tuple[float, float]:
    """An argparse ``type=`` for ``--beta-distribution``: ``log_uniform`` or ``A,B``.

    Example:
        >>> beta_distribution("0.4,0.8")
        (0.4, 0.8)
    """
    try:
        return check_beta_distribution(text if text == "log_uniform" else text.split(","))
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"must be log_uniform or A,B (two positive numbers), got {text!r}") from error


# --kl: the AmortizedVI analytic_kl of each choice
KL_ESTIMATES = {"auto": None, "closed-form": True, "draws": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits | mnist | a .npz with train/valid/test arrays | a .npy or "
                             ".csv array, split 80/10/10 (default digits)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="iwae")
    add_num_particles(parser, 5, 1, "-k")
    parser.add_argument("--beta", type=real(0, closed="low"), default=None,
                        help="KL weight of --objective beta (>= 0; needed there, refused "
                             "elsewhere)")
    parser.add_argument("--beta-range", type=real(0), nargs=2, default=[0.01, 10.0],
                        metavar=("LOW", "HIGH"), help="β range of --objective multi_rate")
    parser.add_argument("--num-betas", type=integer(2), default=20,
                        help="β grid of the rate-distortion curve (multi_rate)")
    default = DEFAULT_BETA_DISTRIBUTION
    shown = default if isinstance(default, str) else ",".join(f"{v:g}" for v in default)
    parser.add_argument("--beta-distribution", type=beta_distribution,
                        default=default, metavar="log_uniform|A,B",
                        help="how multi_rate draws β over --beta-range: log-uniform, or the "
                             f"position of log β Kumaraswamy(A, B) distributed (default {shown})")
    parser.add_argument("--beta-extension", type=real(0, closed="low"),
                        default=DEFAULT_BETA_EXTENSION,
                        help="decades of β below --beta-range that multi_rate also trains on "
                             f"(default {DEFAULT_BETA_EXTENSION:g})")
    parser.add_argument("--gate-lr-multiplier", type=real(0),
                        default=DEFAULT_GATE_LR_MULTIPLIER,
                        help="learning rate of the β-gate slopes over --lr (multi_rate)")
    parser.add_argument("--response-rank", type=integer(0), default=DEFAULT_RESPONSE_RANK,
                        help="rank of each gated layer's β-dependent weights (multi_rate)")
    parser.add_argument("--response-degree", type=int, choices=RESPONSE_DEGREES,
                        default=DEFAULT_RESPONSE_DEGREE,
                        help="degree in log β of those weights (multi_rate)")
    parser.add_argument("--kl", choices=KL_ESTIMATES, default="auto",
                        help="the rate of elbo, beta and multi_rate: in closed form where "
                             "it has one (auto), always (closed-form) or from the draws")
    parser.add_argument("--epochs", type=integer(1), default=10)
    parser.add_argument("--time-budget", type=real(0), default=None,
                        help="stop training after this many seconds of updates")
    parser.add_argument("--batch-size", type=integer(1), default=100)
    parser.add_argument("--lr", type=real(0), default=1e-3, help="learning rate (> 0)")
    parser.add_argument("--scheduler", choices=("constant", "cosine"), default="constant",
                        help="learning rate over the run: constant, or a cosine decay to 0")
    parser.add_argument("--z-dim", type=integer(1), default=50)
    parser.add_argument("--hidden", type=integer(1), nargs="*", default=[200, 200],
                        help="hidden widths of the decoder and encoder networks")
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="tanh")
    parser.add_argument("--likelihood", choices=("auto", "bernoulli", "gaussian"), default="auto")
    parser.add_argument("--patience", type=integer(1), default=None,
                        help="stop after this many epochs without validation improvement")
    parser.add_argument("--eval-samples", type=integer(1), default=5000,
                        help="importance samples per test point for log p(x)")
    parser.add_argument("--eval-points", type=integer(1), default=None,
                        help="first N test points")
    parser.add_argument("--diagnostic-points", type=integer(1), default=100)


def check(args: argparse.Namespace) -> None:
    low, high = args.beta_range
    if not low < high:
        raise UsageError("--beta-range", f"must be LOW < HIGH, got {low:g} {high:g}")
    if args.objective == "beta" and args.beta is None:
        raise UsageError("--beta", "is needed with --objective beta (the KL weight; 1 is the "
                                   "ELBO)")
    if args.objective != "beta" and args.beta is not None:
        raise UsageError("--beta", f"applies to --objective beta only, not {args.objective}")
    if args.beta is None:  # unused; recorded as before, so that earlier runs resume
        args.beta = 1.0
    if args.objective == "iwae" and args.kl == "closed-form":
        raise UsageError("--kl", "closed-form applies to elbo, beta and multi_rate; iwae "
                                 "weighs whole draws and has no KL term")
    at_least_one_each("--batch-size", args.batch_size)


def run(args: argparse.Namespace, run: Run) -> Outcome:
    train, valid, test = run.agreed(lambda: load_matrix(args.data))
    binary = bool(((train == 0) | (train == 1)).all())
    likelihood = args.likelihood
    if likelihood == "auto":
        likelihood = "bernoulli" if binary else "gaussian"
    elif likelihood == "bernoulli" and not binary:
        raise UsageError("--likelihood", f"bernoulli needs data in {{0, 1}}; {args.data} holds "
                                         f"other values (use gaussian or auto)")
    x_dim = train.shape[1]
    hidden = tuple(args.hidden)
    multi_rate = args.objective == "multi_rate"
    rate_kwargs = ({"multi_rate": True, "beta_range": tuple(args.beta_range),
                    "beta_extension": args.beta_extension,
                    "response_rank": args.response_rank,
                    "response_degree": args.response_degree} if multi_rate else {})
    engine_kwargs = ({"beta_distribution": args.beta_distribution,
                      "gate_lr_multiplier": args.gate_lr_multiplier} if multi_rate else {})
    model = VAE(x_dim, args.z_dim, hidden, likelihood=likelihood, activation=args.activation,
                **rate_kwargs)
    guide = GaussianEncoder(x_dim, args.z_dim, hidden, activation=args.activation,
                            **rate_kwargs)
    vi = AmortizedVI(model, guide, objective=args.objective, num_particles=args.num_particles,
                     lr=args.lr, **({"beta": args.beta} if args.objective == "beta" else {}),
                     scheduler=None if args.scheduler == "constant" else args.scheduler,
                     analytic_kl=KL_ESTIMATES[args.kl], **engine_kwargs)
    progress = False if args.quiet else None
    vi.fit(train, epochs=args.epochs, batch_size=args.batch_size, valid=valid,
           patience=args.patience, seed=args.seed, progress=progress,
           time_budget=args.time_budget, **run.train_options(safe_keys=("num_betas",)))
    # the run's, over every call that trained it (a rerun of a finished run adds none)
    train_seconds = sum(vi.history.epochs.get("seconds", []))
    test_eval = test[: args.eval_points] if args.eval_points else test
    ll = evaluate_rows(lambda rows: log_likelihood(model, guide, rows, args.eval_samples,
                                                   progress=progress), test_eval, args.seed)
    curve = rate_distortion(model, guide, test_eval)
    idata = to_inference_data(vi, test_eval[: args.diagnostic_points])
    if multi_rate:  # the curve of the whole evaluation set, not only the diagnostic points
        low, high = args.beta_range
        betas = torch.logspace(np.log10(low), np.log10(high), args.num_betas)
        idata.rate_distortion = rate_distortion_dataset(rate_distortion(model, guide,
                                                                         test_eval, betas))
    stderr = float(ll.std() / ll.numel() ** 0.5) if ll.numel() > 1 else float("nan")
    metrics = {
        "test_log_likelihood": float(ll.mean()),
        "test_stderr": stderr,
        "test_points": int(test_eval.shape[0]),
        "eval_samples": args.eval_samples,
        "rate": float(curve.rate),
        "distortion": float(curve.distortion),
        "epochs": vi.history.num_epochs,
        "train_seconds": train_seconds,
    }
    idata.posterior.attrs.update(
        data=args.data, test_log_likelihood=metrics["test_log_likelihood"],
        test_log_likelihood_se=stderr, eval_samples=args.eval_samples, rate=metrics["rate"],
        distortion=metrics["distortion"],
    )
    if multi_rate:
        metrics["rate_distortion"] = {
            "beta": idata.rate_distortion["beta"].values.tolist(),
            "rate": idata.rate_distortion["rate"].values.tolist(),
            "distortion": idata.rate_distortion["distortion"].values.tolist(),
        }
    line = (f"test log p(x) = {metrics['test_log_likelihood']:.2f} ± {stderr:.2f} nats "
            f"(S={args.eval_samples}, {metrics['test_points']} points); rate "
            f"{metrics['rate']:.2f}, distortion {metrics['distortion']:.2f} nats; "
            f"{metrics['epochs']} epochs in {rounded(train_seconds, 3)} s")
    return Outcome(idata, metrics, f"VAE ({args.objective}) on {args.data}", [line])


COMMAND = Command(
    name="vae",
    help="variational autoencoder trained by amortized VI",
    description=__doc__.split("\n\n")[0],
    add_arguments=add_arguments,
    check=check,
    run=run,
    flags={"num_particles": "--num-particles", "beta_range": "--beta-range",
           "z_dim": "--z-dim", "hidden": "--hidden",
           "beta_distribution": "--beta-distribution", "beta_extension": "--beta-extension",
           "gate_lr_multiplier": "--gate-lr-multiplier", "response_rank": "--response-rank",
           "response_degree": "--response-degree"},
    demo=["--data", "digits", "--objective", "iwae", "-k", "5", "--z-dim", "8", "--hidden",
          "128", "--epochs", "60", "--batch-size", "50", "--lr", "3e-3", "--eval-samples",
          "1000", "--diagnostic-points", "50"],
    demo_epochs=True,
    distributes="every global --batch-size minibatch is split into contiguous shares, one "
                "per process, with the gradients averaged (the update equals the "
                "one-process update on the global batch); the test points of log p(x) are "
                "split too. Rank 0 validates, checkpoints and writes --out.",
)
