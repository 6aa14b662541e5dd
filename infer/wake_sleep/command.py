"""``posterity fit sbn``: train a sigmoid belief net with a wake-sleep algorithm.

``posterity fit sbn --data mnist --algorithm nrws --layers 200 200 10 -k 10 --epochs 10
--out runs/sbn`` trains, evaluates ``log p(x)`` (for BiHM ``log p*(x)`` with its
partition function) and leaves ``report.html``, ``idata.nc``, ``metrics.json`` and
``checkpoint.pt`` in ``--out``. ``--data`` takes what ``posterity fit vae`` takes
(binary data only). ``train_seconds`` in ``metrics.json`` is the time of the run's
updates over every call that trained it (validation and evaluation excluded).
"""

from __future__ import annotations

import argparse

from posterity.datasets import DataError, load_matrix

from .. import distributed
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
from .engine import ALGORITHMS, DEFAULT_INSOMNIA, WakeSleep
from .helmholtz import helmholtz_machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits | mnist | path to binary .npz/.npy/.csv (default digits)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="nrws")
    parser.add_argument("--layers", type=integer(1), nargs="+", default=[200, 200, 10],
                        help="latent widths from the data up (the data width is inferred)")
    add_num_particles(parser, 10, 1, "-k",
                      help="particles per data point (at least 2 except for --algorithm ws)")
    parser.add_argument("--damping", type=real(0, closed="low"), default=None,
                        help="Fisher damping of the natural algorithms (>= 0; default: the "
                             "engine's, 0.03 for nrws and 0.05 for nbihm)")
    parser.add_argument("--refresh-every", type=integer(1), default=None,
                        help="recompute the Fisher factorizations every this many updates "
                             "(default: the engine's, 10)")
    parser.add_argument("--insomnia", type=real(0, 1, closed="both"), default=None,
                        help="wake-q weight of rws and nrws, in [0, 1] (default: the "
                             "engine's, 0.5)")
    parser.add_argument("--epochs", type=integer(1), default=10)
    parser.add_argument("--time-budget", type=real(0), default=None,
                        help="stop training after this many seconds of updates")
    parser.add_argument("--batch-size", type=integer(1), default=32)
    parser.add_argument("--lr", type=real(0), default=None,
                        help="learning rate (> 0; default: the algorithm's own, see "
                             "posterity.infer.wake_sleep.DEFAULTS)")
    parser.add_argument("--valid-points", type=integer(1), default=500)
    parser.add_argument("--eval-samples", type=integer(1), default=5000)
    parser.add_argument("--eval-points", type=integer(1), default=None,
                        help="first N test points")
    parser.add_argument("--diagnostic-points", type=integer(1), default=100)


def check(args: argparse.Namespace) -> None:
    if args.algorithm != "ws" and args.num_particles < 2:
        raise UsageError("--num-particles", f"must be >= 2 for --algorithm {args.algorithm} "
                                            f"(it reweights particles), got {args.num_particles}")
    for flag, name, algorithms in (("--damping", "damping", ("nrws", "nbihm")),
                                   ("--refresh-every", "refresh_every", ("nrws", "nbihm")),
                                   ("--insomnia", "insomnia", ("rws", "nrws"))):
        if getattr(args, name) is not None and args.algorithm not in algorithms:
            raise UsageError(flag, f"applies to --algorithm {' and '.join(algorithms)} only, "
                                   f"not {args.algorithm}")
    if args.insomnia is None:  # recorded as before, so that earlier runs resume
        args.insomnia = DEFAULT_INSOMNIA
    at_least_one_each("--batch-size", args.batch_size)


def _binary(data: str):
    parts = load_matrix(data)
    for part in parts:
        if not bool(((part == 0) | (part == 1)).all()):
            raise DataError(f"{data} holds values other than 0 and 1; a sigmoid belief "
                            f"net models binary data")
    return parts


def run(args: argparse.Namespace, run: Run) -> Outcome:
    train, valid, test = run.agreed(lambda: _binary(args.data))
    model, guide = helmholtz_machine((train.shape[1], *args.layers))
    tuning = {name: getattr(args, name) for name in ("lr", "damping", "refresh_every")
              if getattr(args, name) is not None}  # unset: the engine's tuned defaults
    if args.algorithm in ("rws", "nrws"):
        tuning["insomnia"] = args.insomnia
    engine = WakeSleep(model, guide, algorithm=args.algorithm, num_particles=args.num_particles,
                       **tuning)
    progress = False if args.quiet else None
    engine.fit(train, epochs=args.epochs, batch_size=args.batch_size,
               valid=valid[: args.valid_points], seed=args.seed, progress=progress,
               time_budget=args.time_budget, **run.train_options(safe_keys=("valid_points",)))
    # the run's, over every call that trained it (a rerun of a finished run adds none)
    train_seconds = sum(engine.history.epochs.get("seconds", []))
    test_eval = test[: args.eval_points] if args.eval_points else test
    options = {}
    if engine.bidirectional and distributed.is_initialized():  # one Ẑ for every rank's rows
        options["log_partition"] = distributed.broadcast_object(
            engine.log_partition()[0] if distributed.is_main() else None)
    ll = evaluate_rows(lambda rows: engine.log_likelihood(rows, args.eval_samples,
                                                          progress=progress, **options),
                       test_eval, args.seed)
    idata = engine.to_inference_data(test_eval[: args.diagnostic_points])
    stderr = float(ll.std() / ll.numel() ** 0.5) if ll.numel() > 1 else float("nan")
    metrics = {
        "algorithm": args.algorithm,
        "test_log_likelihood": float(ll.mean()),
        "test_stderr": stderr,
        "test_points": int(test_eval.shape[0]),
        "eval_samples": args.eval_samples,
        "epochs": engine.history.num_epochs,
        "updates": engine.num_steps,
        "train_seconds": train_seconds,
    }
    if engine.bidirectional:
        metrics["log_partition"] = engine.history.epochs["log_partition"][-1] \
            if "log_partition" in engine.history.epochs else engine.log_partition()[0]
    idata.posterior.attrs.update(data=args.data, test_log_likelihood=metrics[
        "test_log_likelihood"], test_log_likelihood_se=stderr, eval_samples=args.eval_samples)
    line = (f"test log p(x) = {metrics['test_log_likelihood']:.2f} ± {stderr:.2f} nats "
            f"(S={args.eval_samples}, {metrics['test_points']} points); "
            f"{metrics['epochs']} epochs in {rounded(train_seconds, 3)} s")
    return Outcome(idata, metrics, f"Sigmoid belief net ({args.algorithm}) on {args.data}",
                   [line])


COMMAND = Command(
    name="sbn",
    help="sigmoid belief net trained by (natural) wake-sleep",
    description=__doc__.split("\n\n")[0],
    add_arguments=add_arguments,
    check=check,
    run=run,
    flags={"num_particles": "--num-particles", "damping": "--damping",
           "refresh_every": "--refresh-every", "insomnia": "--insomnia", "layers": "--layers"},
    demo=["--data", "digits", "--algorithm", "nrws", "--layers", "32", "8", "-k", "5",
          "--epochs", "20", "--valid-points", "250", "--eval-samples", "500",
          "--diagnostic-points", "50"],
    demo_epochs=True,
    distributes="every global --batch-size minibatch is split into contiguous shares, one "
                "per process, with the gradients (and NRWS's Fisher blocks) reduced over the "
                "processes; the test points of log p(x) are split too. Rank 0 validates, "
                "checkpoints and writes --out.",
)
