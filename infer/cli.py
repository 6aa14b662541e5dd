"""Command line: ``posterity fit vae|sbn|ssm|bnn ...`` and ``posterity demo``.

Each engine family registers one ``posterity fit`` subcommand in its ``command.py``
(:class:`~posterity.infer.command.Command`); this module holds the one parser, the
flags every subcommand shares, and the plumbing around a run:

* ``--out`` is created and proven writable before any work; ``--out/checkpoint.pt`` is
  the checkpoint (resumed unless ``--fresh``, refused if written with other settings);
* the command returns what to write, and this module writes ``idata.nc``,
  ``report.html`` and ``metrics.json`` once, then prints a summary;
* every error is one line, ``posterity: error: ...``, naming the flag where one is to
  blame: exit status 2 for bad flags, data files and checkpoints, 1 for failures of the
  run (disk full, divergence), 130 for an interrupt (after the checkpoint is written).
  ``--debug`` shows the traceback instead.

``posterity demo`` fits one model of each family on data that ship with the package and
writes one report with a section per family (``--only vae`` runs one).

Example:
    >>> main(["fit", "vae", "--z-dim", "0"])  # doctest: +SKIP
    posterity: error: --z-dim must be >= 1, got 0
    2
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from . import train
from .amortized import command as amortized_command
from .checkpoints import CheckpointError, CheckpointLockedError, RunLock
from .command import Command, Outcome, Run, UsageError, integer
from .report import combined_report, report
from .sgmcmc import command as sgmcmc_command
from .smc import command as smc_command
from .wake_sleep import command as wake_sleep_command

COMMANDS: tuple[Command, ...] = (
    amortized_command.COMMAND,   # posterity fit vae
    wake_sleep_command.COMMAND,  # posterity fit sbn
    smc_command.COMMAND,         # posterity fit ssm
    sgmcmc_command.COMMAND,      # posterity fit bnn
)

# Engine argument names that the shared flags set, for translating engine errors.
SHARED_FLAGS = {"lr": "--lr", "batch_size": "--batch-size", "epochs": "--epochs",
                "time_budget": "--time-budget", "seed": "--seed", "patience": "--patience",
                "num_particles": "--num-particles"}

# `posterity demo`: each family's part on embedded data, as its command declares it.
DEMO = {command.name: list(command.demo) for command in COMMANDS if command.demo is not None}
DEMO_EPOCHS = tuple(command.name for command in COMMANDS if command.demo_epochs)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line that starts with the flag:
    ``posterity: error: --z-dim must be >= 1, got 0`` (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        found = re.match(r"argument (\S+): (.*)", message, re.DOTALL)
        if found:
            names, rest = found.groups()
            flag = max(names.split("/"), key=len)
            message = f"{flag} {rest}" if rest.startswith("must") else f"{flag}: {rest}"
        self.exit(2, f"posterity: error: {message}\n")


def _add_shared(parser: argparse.ArgumentParser, out: str) -> None:
    shared = parser.add_argument_group("every command")
    shared.add_argument("--out", default=out,
                        help=f"output folder: report.html, idata.nc, metrics.json, checkpoint "
                             f"(default {out})")
    shared.add_argument("--seed", type=integer(), default=0, help="random seed (default 0)")
    shared.add_argument("--fresh", action="store_true",
                        help="ignore a checkpoint in --out instead of resuming from it")
    shared.add_argument("--quiet", action="store_true", help="no progress bars")
    shared.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    shared.add_argument("--threads", type=integer(1), default=1,
                        help="PyTorch CPU threads (default 1)")


def build_parser() -> argparse.ArgumentParser:
    """The ``posterity`` parser: ``fit <family>`` for each of :data:`COMMANDS`, and ``demo``."""
    parser = Parser(prog="posterity", description="Fit a model and write its report "
                    "(posterity fit FAMILY), or fit one of each family on embedded data "
                    "(posterity demo).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{fit,demo}")
    fit = commands.add_parser("fit", help="train a model and write a report",
                              description="Train a model, evaluate it and write a report.")
    models = fit.add_subparsers(dest="family_name", required=True, metavar="{" + ",".join(
        c.name for c in COMMANDS) + "}")
    for command in COMMANDS:
        sub = models.add_parser(command.name, help=command.help,
                                description=(command.description or command.help).replace(
                                    "``", ""))
        command.add_arguments(sub)
        _add_shared(sub, f"runs/{command.name}")
        sub.set_defaults(handler=_fit, family=command)
    demo = commands.add_parser(
        "demo", help="one model of each family on embedded data, one report",
        description="Fit a VAE and a sigmoid belief net on the binarized 8x8 digits, "
                    "stochastic volatility on GBP/USD (PaRIS learning, particle Gibbs) and a "
                    "Bayesian MLP on UCI concrete by SGHMC; write one report.")
    demo.add_argument("--only", nargs="+", choices=tuple(DEMO), default=list(DEMO),
                      metavar="FAMILY", help=f"run only these of {', '.join(DEMO)}")
    demo.add_argument("--epochs", type=integer(1), default=None,
                      help="epochs of the VAE and the SBN (default: the demo's own)")
    _add_shared(demo, "demo_out")
    demo.set_defaults(handler=_demo)
    return parser


def _check_out(out: Path) -> Path:
    """Create ``out`` and prove it writable (a probe file), before any compute."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".posterity-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way" if not out.is_dir() else reason
        raise UsageError("--out", f"{out} is not a writable folder ({reason})") from None
    return out


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One run at a time in ``out`` (the checkpoint has its own lock while training)."""
    lock = RunLock(out / "run")
    try:
        lock.__enter__()
    except CheckpointLockedError:
        holder = (out / "run.lock").read_text().strip() or "unknown"
        raise UsageError("--out", f"{out} is in use by another posterity run (pid {holder}); "
                                  f"wait for it to finish, or choose another --out") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _execute(command: Command, args: argparse.Namespace, out: Path) -> Outcome:
    """Run ``command`` with its checkpoint in ``out``; the seed and threads set first."""
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
              if k not in ("handler", "family", "family_name") and _plain(v)}
    run = Run(out=out, checkpoint=out / "checkpoint.pt", resume=not args.fresh, config=config)
    resumed = run.resumed
    outcome = command.run(args, run)
    if resumed:
        outcome.lines.append(f"resumed from {run.checkpoint} (--fresh starts over)")
    return outcome


def _replace(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(temporary)`` then move it onto ``path``: a crash leaves the old file whole,
    and a reader that holds the old file open (``az.from_netcdf``) keeps it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _write(outcome: Outcome, out: Path, page: bool = True) -> Path | None:
    """``idata.nc``, ``metrics.json`` and (with ``page``) ``report.html`` in ``out``."""
    _replace(out / "idata.nc", lambda p: outcome.idata.to_netcdf(str(p), engine="h5netcdf"))
    _replace(out / "metrics.json",
             lambda p: p.write_text(json.dumps(outcome.metrics, indent=2)))
    if not page:
        return None
    return _replace(out / "report.html",
                    lambda p: report(outcome.idata, p, title=outcome.title))


def _fit(args: argparse.Namespace) -> int:
    command = args.family
    command.check(args)
    out = _check_out(Path(args.out))
    with _lock(out):
        outcome = _execute(command, args, out)
        path = _write(outcome, out)
    for line in outcome.lines:
        print(line)
    print(f"report: {Path(path).resolve()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    out = _check_out(Path(args.out))
    parser = build_parser()
    shared = ["--seed", str(args.seed), "--threads", str(args.threads)]
    shared += [flag for flag, on in (("--fresh", args.fresh), ("--quiet", args.quiet)) if on]
    entries, metrics, started = [], {}, time.perf_counter()
    with _lock(out):
        for family in dict.fromkeys(args.only):
            argv = ["fit", family, *DEMO[family], *shared, "--out", str(out / family)]
            if args.epochs is not None and family in DEMO_EPOCHS:
                argv += ["--epochs", str(args.epochs)]
            family_args = parser.parse_args(argv)
            family_args.family.check(family_args)
            begun, cpu = time.perf_counter(), time.process_time()
            outcome = _execute(family_args.family, family_args, _check_out(out / family))
            _write(outcome, out / family, page=False)  # one page for all, below
            seconds = time.perf_counter() - begun
            metrics[family] = {**outcome.metrics, "seconds": seconds,
                               "cpu_seconds": time.process_time() - cpu}
            note = " ".join(outcome.lines) + f" ({seconds:.0f} s; posterity fit {family} " \
                + " ".join(DEMO[family]) + ")"
            entries.append((outcome.title, outcome.idata, note))
            print(f"{family}: " + "; ".join(outcome.lines), flush=True)
        _replace(out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
        path = _replace(out / "report.html",
                        lambda p: combined_report(entries, p, title="posterity demo"))
    print(f"{len(entries)} model(s) in {time.perf_counter() - started:.0f} s")
    print(f"report: {path.resolve()}")
    return 0


def _flags_of(args: argparse.Namespace) -> dict[str, str]:
    """Engine argument names -> the flags that set them, for this command."""
    flags = dict(SHARED_FLAGS)
    family = getattr(args, "family", None)
    if family is not None:
        flags.update(family.flags)
    return flags


def _with_flags(message: str, flags: dict[str, str]) -> str:
    for name in sorted(flags, key=len, reverse=True):
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flags[name], message)
    return message


def _settings_as_flags(message: str, args: argparse.Namespace) -> str:
    """``activation 'tanh' -> 'relu'`` in a checkpoint mismatch becomes ``--activation``."""
    message = message.replace("pass resume=False (CLI: --fresh)", "pass --fresh")
    for name in sorted(vars(args), key=len, reverse=True):
        message = re.sub(rf"(?<=[:,] ){re.escape(name)}(?= )", "--" + name.replace("_", "-"),
                         message)
    return message


def explain(error: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """``(exit status, one-line message)`` for an error that ended a run."""
    data = getattr(args, "data", None)
    if isinstance(error, KeyboardInterrupt):
        if isinstance(error, train.Interrupted) and str(error):
            return 130, str(error)
        cause = f" by {error}" if str(error) else ""
        checkpoint = Path(getattr(args, "out", "")) / "checkpoint.pt"
        if getattr(args, "family", None) is not None and checkpoint.exists():
            return 130, f"interrupted{cause}; rerun the same command to resume from {checkpoint}"
        return 130, f"interrupted{cause}"
    if isinstance(error, UsageError):
        return 2, str(error)
    from posterity.datasets import DataError

    if isinstance(error, DataError):
        return 2, f"--data {error}" if data else str(error)
    if isinstance(error, CheckpointError):
        message = _settings_as_flags(str(error), args)
        if "--fresh" not in message:
            message += " (--fresh starts over)"
        return 2, message
    if isinstance(error, train.NonFiniteError):
        return 1, str(error)
    if isinstance(error, (ValueError, TypeError)):
        return 2, _with_flags(str(error), _flags_of(args))
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        if error.errno == errno.ENOSPC:
            return 1, f"cannot write{where}: the disk is full"
        return 1, f"cannot write{where}: {error.strerror or error}" if error.strerror \
            else f"{error}"
    text = str(error)
    if isinstance(error, RuntimeError) and ("PytorchStreamWriter" in text
                                            or "file write failed" in text):
        return 1, f"cannot write the checkpoint in --out {getattr(args, 'out', '')} (is the " \
                  f"disk full?)"
    return 1, f"{type(error).__name__}: {text.splitlines()[0] if text else ''} (--debug shows " \
              f"the traceback)"


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (as schedulers send) stops a run like Ctrl-C; training loops write their
    checkpoint first."""
    raise KeyboardInterrupt("SIGTERM")


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    text = " ".join(str(message).split())
    print(f"posterity: warning: {text}", file=sys.stderr if file is None else file, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``posterity`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a bad flag (already printed)
        return exit.code if isinstance(exit.code, int) else 0
    terminate = None
    if threading.current_thread() is threading.main_thread():
        terminate = signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _show_warning
            return args.handler(args)
    except (Exception, KeyboardInterrupt) as error:
        if args.debug:
            raise
        status, message = explain(error, args)
        prefix = "posterity: " if status == 130 else "posterity: error: "
        print(prefix + message, file=sys.stderr, flush=True)
        return status
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":
    sys.exit(main())
