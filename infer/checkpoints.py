"""Checkpoints of the training loop: safe to load, atomic to write, describing their run.

A checkpoint is a ``torch.save`` file holding only tensors, numbers, strings, ``None``
and lists/tuples/dicts of them, so that it loads with ``torch.load(weights_only=True)``:
loading never unpickles an arbitrary object, and a planted pickle payload is refused
without running. It stores the run's settings (the caller's ``config``, the loop's own
arguments and the engine's :meth:`~posterity.infer.protocols.Configurable.config`) as
JSON; on resume :func:`compare_settings` refuses a difference that changes the model or
the objective and reports one that is safe (:data:`SAFE_KEYS`).

Writes go to a temporary file beside the checkpoint (named after the process) that
replaces it atomically, so a crash at any moment leaves the previous checkpoint whole.
A lock file ``<checkpoint>.lock`` keeps a second run off the same checkpoint. Under a
process group (:mod:`posterity.infer.distributed`) the training loop locks, writes and
reads on rank 0 alone; the file holds every rank's generator states (:func:`rng_state`
of each, gathered), and each rank restores its own.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "run.pt"
    >>> save(path, {"format": 0, "weights": torch.ones(2)})
    >>> torch.load(path, weights_only=True)["weights"]
    tensor([1., 1.])
    >>> _ = path.write_bytes(b"not a checkpoint")
    >>> load(path, required=())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    posterity.infer.checkpoints.CheckpointError: cannot read checkpoint .../run.pt: ...
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

SAFE_KEYS = frozenset({
    "epochs", "time_budget", "patience", "valid_every", "checkpoint_every", "threads",
    "eval_samples", "eval_points", "diagnostic_points", "out", "restore_best", "world_size",
})
"""Settings that may differ on resume, reported by a warning: they change how long a run
goes on, or what is evaluated afterwards, not what is trained (the number of processes keeps
the global minibatches; only the ranks' draws differ from an uninterrupted run)."""

_WAY_OUT = "pass resume=False (CLI: --fresh) to start over, or use another directory"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, corrupt, not plain data, or locked."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was written by a run with other settings; the message names each."""


class CheckpointLockedError(CheckpointError):
    """Another run holds the checkpoint's lock."""


# --- random number generator state as plain data ----------------------------------------
def rng_state() -> dict[str, Any]:
    """The state of every generator Pyro uses (torch, CUDA, Python, NumPy) as tensors
    and plain values."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = state["random"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- settings ---------------------------------------------------------------------------
def plain_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` flattened to ``{"a.b": value}`` with JSON values (tuples become
    lists, paths and dtypes strings); a ``TypeError`` names a value of another type."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
            return
        if isinstance(value, (os.PathLike, torch.dtype, torch.device)):
            value = str(value)
        try:
            flat[prefix] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            raise TypeError(
                f"setting {prefix!r} must be a number, string, bool, None or a list/dict "
                f"of them, got {type(value).__name__} {value!r}"
            ) from None

    visit("", settings)
    return flat


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


QUIET_KEYS = frozenset({"fresh", "progress", "quiet", "debug"})
"""Settings that are not compared on resume: they say how a call starts or shows
itself, not what it trains."""

LATER_KEYS = frozenset({"data_digest", "engine.analytic_kl"})
"""Settings recorded since 2026-12-07: a checkpoint written before them lacks them and
still resumes (an amortized run from before ``analytic_kl`` goes on with the closed-form
KL of the default: the same objective, estimated with less noise)."""


def compare_settings(
    path: os.PathLike | str,
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    safe_keys: Iterable[str] = (),
) -> list[str]:
    """Compare a checkpoint's flat settings with this run's.

    Returns one ``"name new (was old)"`` note per safe difference; raises
    :class:`CheckpointMismatchError` naming every other difference with both values.
    A setting is safe when its name, or the last dotted part of it, is in
    :data:`SAFE_KEYS` or ``safe_keys``; :data:`QUIET_KEYS` are not compared, nor
    :data:`LATER_KEYS` that the checkpoint lacks.
    """
    safe = SAFE_KEYS | set(safe_keys)
    missing = object()
    notes, refused = [], []
    for name in sorted(set(saved) | set(current)):
        if name.rsplit(".", 1)[-1] in QUIET_KEYS:
            continue
        old, new = saved.get(name, missing), current.get(name, missing)
        if old is not missing and new is not missing and _same(old, new):
            continue
        if old is missing and name in LATER_KEYS:
            continue
        shown_old = "(not set)" if old is missing else repr(old)
        shown_new = "(not set)" if new is missing else repr(new)
        if name in safe or name.rsplit(".", 1)[-1] in safe:
            notes.append(f"{name} {shown_new} (was {shown_old})")
        else:
            refused.append(f"{name} {shown_old} -> {shown_new}")
    if refused:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by a run with other settings: "
            + ", ".join(refused) + f"; {_WAY_OUT}"
        )
    return notes


# --- plain data -------------------------------------------------------------------------
_SCALARS = (int, float, bool, str, bytes, type(None))


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """A ``TypeError`` naming the first value in ``value`` that
    ``torch.load(weights_only=True)`` would refuse (scalars must be of the built-in types
    themselves: a ``numpy.float64`` is refused)."""
    if type(value) in _SCALARS or isinstance(value, (torch.Tensor, torch.Size, torch.dtype)):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise TypeError(f"{where} has a key of type {type(key).__name__}; "
                                "checkpoints hold only plain keys")
            check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, set):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; checkpoints hold "
        "only tensors, numbers, strings, None and lists/tuples/dicts of them (convert it "
        "in state_dict(): e.g. numpy arrays with torch.as_tensor, numpy numbers with "
        "float())"
    )


# --- files ------------------------------------------------------------------------------
def _write_file(path: Path, data: memoryview) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _plain_os_error(error: OSError, doing: str, path: Path) -> OSError:
    reason = error.strerror or str(error)
    plain = OSError(f"could not {doing} {path}: {reason}")
    plain.errno = error.errno
    return plain


def temporary_path(path: Path) -> Path:
    """The temporary file of this process beside ``path``."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def save(path: os.PathLike | str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a crash leaves the previous file).

    Raises:
        TypeError: a value in ``payload`` is not plain data (named).
        OSError: the file cannot be written (full disk, no permission), one line
            naming the path.
    """
    path = Path(path)
    check_plain(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(tmp, buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _plain_os_error(error, "write the checkpoint", path) from None


def load(path: os.PathLike | str, required: Iterable[str] = ("format",)) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; any failure is a one-line
    :class:`CheckpointError` naming the file and the way out."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: "
                              f"{error.strerror or error}; {_WAY_OUT}") from None
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # bad bytes, not a refused object
            raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or "
                                  f"not a checkpoint; {_WAY_OUT}") from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain "
            f"values, which are never loaded (it may have been tampered with); {_WAY_OUT}"
        ) from None
    except Exception:  # noqa: BLE001 (torch raises RuntimeError, EOFError, ... on bad bytes)
        what = "the file is empty" if size == 0 else "the file is truncated or not a checkpoint"
        raise CheckpointError(f"cannot read checkpoint {path}: {what}; {_WAY_OUT}") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"cannot read checkpoint {path}: not a posterity training "
                              f"checkpoint (no {', '.join(missing)}); {_WAY_OUT}")
    return state


def remove_stale_temporaries(path: os.PathLike | str) -> None:
    """Delete temporary files that crashed writers left beside ``path``; call it while
    holding the :class:`RunLock`."""
    path = Path(path)
    for stale in glob.glob(glob.escape(str(path)) + ".*tmp"):
        with contextlib.suppress(OSError):
            os.unlink(stale)


class RunLock:
    """An exclusive lock on ``<path>.lock`` for the life of a run (``with RunLock(p):``).

    A second run on the same checkpoint fails at once with
    :class:`CheckpointLockedError`. Creating the lock also proves, before any compute,
    that the checkpoint's directory is writable. The lock file is removed when the run
    ends (while still held; a run that opened the removed file before then sees that
    its lock is on a file no longer in place and takes the new one).
    """

    def __init__(self, path: os.PathLike | str):
        self.checkpoint = Path(path)
        self.path = self.checkpoint.with_name(self.checkpoint.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        while True:
            fd = self._open_and_lock()
            try:
                in_place = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except OSError:
                in_place = False
            if in_place or fcntl is None:
                break
            os.close(fd)  # locked a file that its last holder removed: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def _open_and_lock(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _plain_os_error(error, "write beside the checkpoint", self.path) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise CheckpointLockedError(
                    f"another run (pid {holder}) is using checkpoint {self.checkpoint}; wait "
                    f"for it to finish, or use another directory"
                ) from None
        return fd

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:  # still ours
                    self.path.unlink()
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
