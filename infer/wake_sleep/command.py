"""``posterity fit sbn``: train a sigmoid belief net with a wake-sleep algorithm.

``posterity fit sbn --data mnist --algorithm nrws --layers 200 200 10 -k 10 --epochs 10
--out runs/sbn`` trains, evaluates ``log p(x)`` (for BiHM ``log p*(x)`` with its
partition function) and writes ``report.html``, ``idata.nc``, ``metrics.json`` and
``checkpoint.pt`` into ``--out``. ``--data`` takes what ``posterity fit vae`` takes
(binary data only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from ..report import report
from .engine import ALGORITHMS, WakeSleep
from .helmholtz import helmholtz_machine


def fit_sbn(args: argparse.Namespace) -> int:
    from ..cli import load_data

    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    train, valid, test = load_data(args.data)
    model, guide = helmholtz_machine((train.shape[1], *args.layers))
    engine = WakeSleep(model, guide, algorithm=args.algorithm, num_particles=args.num_particles,
                       lr=args.lr, damping=args.damping, refresh_every=args.refresh_every,
                       insomnia=args.insomnia)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    resumed = checkpoint.exists() and not args.fresh
    started = time.perf_counter()
    engine.fit(train, epochs=args.epochs, batch_size=args.batch_size,
               valid=valid[: args.valid_points], checkpoint=checkpoint, resume=not args.fresh,
               seed=args.seed, progress=not args.quiet, time_budget=args.time_budget)
    train_seconds = time.perf_counter() - started
    test_eval = test[: args.eval_points] if args.eval_points else test
    ll = engine.log_likelihood(test_eval, args.eval_samples, progress=not args.quiet)
    idata = engine.to_inference_data(test_eval[: args.diagnostic_points])
    metrics = {
        "algorithm": args.algorithm,
        "test_log_likelihood": float(ll.mean()),
        "test_stderr": float(ll.std() / ll.numel() ** 0.5),
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
        "test_log_likelihood"], eval_samples=args.eval_samples)
    idata.to_netcdf(str(out / "idata.nc"), engine="h5netcdf")
    path = report(idata, out / "report.html",
                  title=f"Sigmoid belief net ({args.algorithm}) on {args.data}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"test log p(x) = {metrics['test_log_likelihood']:.3f} ± {metrics['test_stderr']:.3f}"
          f" nats (S={args.eval_samples}, {metrics['test_points']} points); "
          f"{metrics['epochs']} epochs"
          + (f" (resumed from {checkpoint}; --fresh starts over)" if resumed
             else f" trained in {train_seconds:.1f} s"))
    print(f"report: {path.resolve()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits | mnist | path to binary .npz/.npy/.csv")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="nrws")
    parser.add_argument("--layers", type=int, nargs="+", default=[200, 200, 10],
                        help="latent widths from the data up (the data width is inferred)")
    parser.add_argument("-k", "--num-particles", type=int, default=10)
    parser.add_argument("--damping", type=float, default=0.2, help="natural algorithms")
    parser.add_argument("--refresh-every", type=int, default=1,
                        help="recompute the Fisher factorizations every this many updates")
    parser.add_argument("--insomnia", type=float, default=0.5, help="RWS wake-q weight")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="stop after this many seconds of updates")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--valid-points", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-points", type=int, default=None, help="first N test points")
    parser.add_argument("--diagnostic-points", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/sbn")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore a checkpoint in --out instead of resuming from it")
    parser.set_defaults(func=fit_sbn)
