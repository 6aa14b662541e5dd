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

Under ``torchrun`` (``torchrun --nproc-per-node 2 --no-python posterity fit vae ...``)
every process runs the command: :func:`main` sees torchrun's ``WORLD_SIZE`` and joins
the process group (gloo: the commands compute on CPUs), each family splits its work as
its :attr:`~posterity.infer.command.Command.distributes` says, and only rank 0 creates,
locks and writes ``--out`` and prints. The flag checks (and rank 0's ``--out`` check) are
agreed by all ranks before any work, so a bad flag ends every rank at once with one
error line; a rank that fails later ends the others in their next collective.
``posterity demo`` runs in one process only.

Example:
    >>> main(["fit", "vae", "--z-dim", "0"])  # doctest: +SKIP
    posterity: error: --z-dim must be >= 1, got 0
    2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import json
import os
import re
import signal
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from . import distributed, train
from .amortized import command as amortized_command
from .checkpoints import CheckpointError, CheckpointLockedError, RunLock
from .command import Command, Outcome, Run, UsageError, integer
from .progress import set_progress
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


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that a line never breaks inside ``--a-flag`` and
    every option with a default shows it (unless its help already speaks of one)."""

    def _format_action(self, action: argparse.Action) -> str:
        default = action.default
        if (action.option_strings and "default" not in (action.help or "")
                and default is not None and default is not argparse.SUPPRESS
                and not isinstance(default, bool)):
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default {shown.replace('%', '%%')})".strip()
        return super()._format_action(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = " ".join(text.split())
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


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
                                    "``", ""), formatter_class=_HelpFormatter)
        command.add_arguments(sub)
        if command.distributes:
            sub.epilog = f"Under torchrun: {command.distributes}"
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
        try:
            holder = (out / "run.lock").read_text().strip() or "unknown"
        except OSError:  # it ended meanwhile
            holder = "unknown"
        raise UsageError("--out", f"{out} is in use by another posterity run (pid {holder}); "
                                  f"wait for it to finish, or choose another --out") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _remove_if_unused(out: Path) -> None:
    """Remove ``out`` (created by this run) if the run left nothing in it (its lock file
    went with the lock; another run's lock keeps the folder)."""
    with contextlib.suppress(OSError):
        out.rmdir()


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
    run = Run(out=out, checkpoint=out / "checkpoint.pt", resume=not args.fresh, config=config,
              together=lambda step: _agree(step, args))
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


class AgreedError(Exception):
    """The run cannot start because of an error agreed by every rank: ``status`` and
    ``message`` as :func:`explain` gave them on ``origin``, the first rank that failed."""

    def __init__(self, status: int, message: str, origin: int) -> None:
        super().__init__(message)
        self.status, self.message, self.origin = status, message, origin


def _agree(step: Callable[[], Any], args: argparse.Namespace) -> Any:
    """``step()`` (flag checks, rank 0's ``--out``, reading the data) run on every rank,
    which then agree on its outcome: if it failed on any rank, every rank raises
    :class:`AgreedError` with the first failure, so that all of them stop at once instead
    of waiting in a collective for a rank that left. In one process the error itself
    propagates."""
    failure, value = None, None
    try:
        value = step()
    except Exception as error:
        if not distributed.is_initialized():
            raise
        failure = explain(error, args)
    if distributed.is_initialized():
        for origin, found in enumerate(distributed.all_gather_objects(failure)):
            if found is not None:
                raise AgreedError(*found, origin)
    return value


def _fit(args: argparse.Namespace) -> int:
    command = args.family
    out = Path(args.out)
    main_rank = distributed.is_main()
    with contextlib.ExitStack() as stack:
        def prepare() -> None:
            command.check(args)
            if main_rank:  # the other ranks never touch --out
                if not out.exists():  # a run that fails before writing leaves no folder
                    stack.callback(_remove_if_unused, out)
                _check_out(out)
                stack.enter_context(_lock(out))

        _agree(prepare, args)
        outcome = _execute(command, args, out)
        if distributed.is_initialized():
            outcome.metrics["processes"] = distributed.world_size()
        if not main_rank:
            return 0
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
    if isinstance(error, AgreedError):
        return error.status, error.message
    if isinstance(error, UsageError):
        return 2, str(error)
    if isinstance(error, distributed.DistributedError):
        return 2, str(error)
    if _lost_rank(error):
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "Timed out" in first:
            return 1, (f"another process of this run did not answer within "
                       f"POSTERITY_DIST_TIMEOUT ({distributed.DEFAULT_TIMEOUT:g} s unless "
                       f"set; it may have hung or stopped): {first}")
        return 1, f"another process of this run stopped (see its own error line): {first}"
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


def _lost_rank(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank left."""
    if not distributed.is_initialized():
        return False
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("Connection closed by peer", "Connection reset by peer",
                                  "Broken pipe", "Timed out waiting"))


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (as schedulers send) stops a run like Ctrl-C; training loops write their
    checkpoint first."""
    raise KeyboardInterrupt("SIGTERM")


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    text = " ".join(str(message).split())
    print(f"posterity: warning: {text}", file=sys.stderr if file is None else file, flush=True)


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher) started this process as one of several:
    ``WORLD_SIZE`` > 1 in the environment."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``posterity`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Launched by ``torchrun`` with more than one process (:func:`launched`), it joins the
    process group first (gloo), prints outputs and the errors every rank agrees on from
    rank 0 only, and leaves the group at the end."""
    joined = False
    if launched():
        joined = not torch.distributed.is_initialized()
        try:
            distributed.init_process_group("gloo")
        except Exception as error:  # torchrun's variables missing, the rendezvous failed
            print(f"posterity: error: cannot join the process group of this run: {error}",
                  file=sys.stderr, flush=True)
            return 2
    try:
        return _main(argv)
    finally:
        if joined and torch.distributed.is_initialized():
            with contextlib.suppress(Exception):
                torch.distributed.destroy_process_group()


def _settle() -> None:
    """Wait until every rank got here: rank 0 has printed the error they share before
    any rank exits (torchrun stops the others as soon as one exits with an error)."""
    with contextlib.suppress(Exception):
        distributed.barrier()


def _main(argv: Sequence[str] | None) -> int:
    rank = distributed.rank()
    parser = build_parser()
    try:  # --help and bad flags are the same on every rank: shown once
        with _silenced(rank != 0):
            args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, or a bad flag (already printed)
        _settle()
        return exit.code if isinstance(exit.code, int) else 0
    if distributed.is_initialized() and args.command == "demo":
        if rank == 0:
            print("posterity: error: posterity demo runs in one process; launch it without "
                  "torchrun (posterity fit FAMILY runs under torchrun)", file=sys.stderr,
                  flush=True)
        _settle()
        return 2
    terminate = None
    if threading.current_thread() is threading.main_thread():
        terminate = signal.signal(signal.SIGTERM, _terminate)
    try:
        with warnings.catch_warnings():
            if rank != 0:
                warnings.simplefilter("ignore")  # rank 0 shows them once
                set_progress(False)
            elif not args.debug:
                warnings.showwarning = _show_warning
            return args.handler(args)
    except (Exception, KeyboardInterrupt) as error:
        if args.debug:
            raise
        status, message = explain(error, args)
        if isinstance(error, AgreedError):  # every rank stops here: rank 0 says why
            if rank == 0:
                where = f"rank {error.origin}: " if error.origin else ""
                print(f"posterity: error: {where}{message}", file=sys.stderr, flush=True)
            _settle()
            return status
        if rank != 0 and (status == 130 or isinstance(error, CheckpointError)):
            return status  # rank 0 says it (the loop sends its checkpoint errors to all)
        where = f"rank {rank}: " if rank else ""
        prefix = "posterity: " if status == 130 else "posterity: error: "
        print(prefix + where + message, file=sys.stderr, flush=True)
        return status
    finally:
        if rank != 0:
            set_progress(None)
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def _silenced(silent: bool) -> Iterator[None]:
    """Nothing printed to stdout or stderr within the block when ``silent``."""
    if not silent:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        yield


if __name__ == "__main__":
    sys.exit(main())
