"""What a family's ``command.py`` gives the command line, and the flag types it uses.

A family registers one subcommand of ``posterity fit`` with a :class:`Command`: its name,
``add_arguments(parser)`` for its own flags, an optional ``check(args)`` for rules that
tie several flags together, and ``run(args, run) -> Outcome``. ``run`` computes and
returns what to write (:class:`Outcome`); :mod:`posterity.infer.cli` adds the flags
every command shares (``--out``, ``--seed``, ``--fresh``, ``--quiet``, ``--debug``,
``--threads``), checks ``--out`` before any work, owns the checkpoint path, writes
``idata.nc``, ``report.html`` and ``metrics.json`` once, and turns errors into one line.

Flag types (:func:`integer`, :func:`real`) check ranges while the command line is
parsed, so a bad value is reported with its flag: ``--z-dim must be >= 1, got 0``.

Under ``torchrun`` every process runs the same command; :attr:`Command.distributes` says
what the processes split, ``check`` refuses flags the world size cannot split
(:func:`divisible`, :func:`at_least_one_each`), and :func:`evaluate_rows` spreads a
per-row evaluation over the processes.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import arviz as az
import pyro
import torch
from torch import Tensor

from . import distributed, train

_T = TypeVar("_T")


class UsageError(ValueError):
    """A flag value (or a combination of flags) that cannot work; names the flag.

    Example:
        >>> str(UsageError("--steps", "must be >= --samples (50), got 10"))
        '--steps must be >= --samples (50), got 10'
    """

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag} {message}")
        self.flag = flag


@dataclass
class Run:
    """What the command line hands a command: where its checkpoint lives, whether to
    resume from it (``--fresh`` turns resuming off), and the run's flags as plain values
    (``config``), which the checkpoint stores so that a resumed run with other settings
    is refused."""

    out: Path
    checkpoint: Path
    resume: bool
    config: dict[str, Any] = field(default_factory=dict)
    together: Callable[[Callable[[], Any]], Any] = field(default=lambda step: step(),
                                                         repr=False)

    def agreed(self, step: Callable[[], _T]) -> _T:
        """``step()``, agreed by every process of a ``torchrun`` launch: if it fails on any
        of them, all stop at once with that error (one line, from rank 0) instead of the
        others running on into a collective. For what can fail before the first
        collective, such as reading the data; in one process, ``step()``."""
        return self.together(step)

    @property
    def resumed(self) -> bool:
        """True when this run continues from a checkpoint written by an earlier one."""
        return self.resume and self.checkpoint.exists()

    def train_options(self, safe_keys: Iterable[str] = ()) -> dict[str, Any]:
        """Keyword arguments for :func:`posterity.infer.fit` (through an engine's
        ``fit``): the checkpoint, resuming, and the flags as ``config``; a flag named in
        ``safe_keys`` may change on resume (it only affects what is evaluated)."""
        options: dict[str, Any] = {"checkpoint": self.checkpoint, "resume": self.resume}
        parameters = inspect.signature(train.fit).parameters
        if "config" in parameters:
            options["config"] = dict(self.config)
        if "safe_keys" in parameters:
            options["safe_keys"] = tuple(safe_keys)
        return options


@dataclass
class Outcome:
    """What a command returns: the command line writes ``idata`` to ``idata.nc``, a report
    titled ``title`` to ``report.html``, ``metrics`` to ``metrics.json``, and prints
    ``lines``."""

    idata: az.InferenceData
    metrics: dict[str, Any]
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Command:
    """One ``posterity fit NAME`` subcommand.

    Attributes:
        name: the subcommand (``vae``, ``sbn``, ``ssm``, ``bnn``).
        help: one line for ``posterity fit --help``.
        add_arguments: adds the family's own flags to its parser.
        run: ``(args, run) -> Outcome``; the work itself.
        check: ``args -> None``; rules between flags, raising :class:`UsageError`.
        flags: engine argument names and the flags that set them (``subsample_size`` ->
            ``--batch-size``), used to translate an engine's error message.
        description: the text of ``posterity fit NAME --help`` (default ``help``).
        demo: the flags of this family's part of ``posterity demo`` (embedded data, a
            run of well under a minute on 2 cores); ``None`` leaves it out of the demo.
        demo_epochs: whether ``posterity demo --epochs`` sets this part's ``--epochs``.
        distributes: what the processes of a ``torchrun`` launch split, one sentence for
            ``--help`` (empty: the command runs the same work on every process).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Run], Outcome]
    check: Callable[[argparse.Namespace], None] = lambda args: None
    flags: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None
    demo: Sequence[str] | None = None
    demo_epochs: bool = False
    distributes: str = ""


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for an integer in ``[minimum, maximum]``.

    Example:
        >>> integer(1)("3")
        3
        >>> integer(1)("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be >= 1, got 0
    """

    def parse(text: str) -> int:
        value = _number(text, int)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: float | None = None, high: float | None = None, *,
         closed: str = "neither") -> Callable[[str], float]:
    """An argparse ``type=`` for a finite float between ``low`` and ``high``.

    ``closed`` says which ends belong to the range: ``"neither"``, ``"low"``,
    ``"high"`` or ``"both"``; a missing end is unbounded.

    Example:
        >>> real(0, 1)("0.25")
        0.25
        >>> real(0, 1)("1.5")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be in (0, 1), got 1.5
        >>> real(0)("-1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be > 0, got -1
    """
    low_in, high_in = closed in ("low", "both"), closed in ("high", "both")

    def parse(text: str) -> float:
        value = _number(text, float)
        below = low is not None and (value < low if low_in else value <= low)
        above = high is not None and (value > high if high_in else value >= high)
        if below or above:
            if low is not None and high is not None:
                bounds = f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            elif low is not None:
                bounds = f"{'>=' if low_in else '>'} {low:g}"
            else:
                bounds = f"{'<=' if high_in else '<'} {high:g}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def add_num_particles(parser: argparse.ArgumentParser, default: int, minimum: int,
                      *aliases: str, help: str = "particles (importance samples) per data point"
                      ) -> None:
    """``--num-particles`` (with ``aliases``) as every family spells it."""
    short = [a for a in aliases if not a.startswith("--")]
    long = [a for a in aliases if a.startswith("--")]
    parser.add_argument(*short, "--num-particles", *long, dest="num_particles", metavar="N",
                        type=integer(minimum), default=default,
                        help=f"{help} (default {default}, at least {minimum})")


def rounded(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits for printing.

    Example:
        >>> rounded(-16.94000816345215), rounded(0.000123456)
        ('-16.94', '0.0001235')
    """
    return f"{value:.{digits}g}"


def divisible(flag: str, value: int) -> int:
    """``value`` split evenly over the processes: ``value // world_size``, or a
    :class:`UsageError` naming ``flag`` when the number of processes does not divide it.

    Example:
        >>> divisible("--chains", 4)  # one process
        4
    """
    size = distributed.world_size()
    if value % size:
        raise UsageError(flag, f"must be divisible by the number of processes ({size}), so "
                               f"that each holds the same share; got {value}")
    return value // size


def at_least_one_each(flag: str, value: int) -> int:
    """``value`` rows split into contiguous shares (:func:`distributed.share_sizes`);
    a :class:`UsageError` naming ``flag`` when some process would get none."""
    size = distributed.world_size()
    if value < size:
        raise UsageError(flag, f"must be >= the number of processes ({size}), so that each "
                               f"gets a share of the rows; got {value}")
    return value


def evaluate_rows(evaluate: Callable[[Tensor], Tensor], x: Tensor, seed: int) -> Tensor:
    """``evaluate(x)`` for a per-row evaluation (``[n, ...] -> [n]``), each process taking
    its contiguous share of the rows with its own random draws, gathered in row order on
    every process. In one process this is ``evaluate(x)`` with the random state as it is.

    Example:
        >>> import torch
        >>> evaluate_rows(lambda rows: rows.sum(-1), torch.ones(3, 2), seed=0)
        tensor([2., 2., 2.])
    """
    if not distributed.is_initialized():
        return evaluate(x)
    pyro.set_rng_seed(distributed.rank_seed(seed))
    rows = x[distributed.share(len(x))]
    values = evaluate(rows).detach() if len(rows) else None  # fewer rows than processes
    return torch.cat([part for part in distributed.all_gather_objects(values)
                      if part is not None])
