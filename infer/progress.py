"""Progress bars for long work, following tqdm's convention.

A bar is shown on an interactive terminal or in a notebook and hidden when stderr is
not a terminal (a log file, a pipe, CI), so that a script that runs a filter twenty
times writes no progress lines to its log. ``POSTERITY_PROGRESS=0`` in the environment
or :func:`set_progress` ``(False)`` turns every bar off; an engine's ``progress=`` argument
(``True``/``False``) overrides both for that engine. Inside a process group only rank
0 shows bars, whatever ``progress=`` says: the ranks run the same loop, and their bars
would write over each other.

Example:
    >>> from posterity.infer.progress import progress_bar, set_progress
    >>> set_progress(False)
    >>> with progress_bar(total=3, desc="demo") as bar:
    ...     bar.update(3)
    >>> bar.disable
    True
    >>> set_progress(None)  # back to the environment's and the terminal's say
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm

from . import distributed

_OVERRIDE: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Show (``True``) or hide (``False``) every progress bar; ``None`` restores the
    default (the ``POSTERITY_PROGRESS`` variable, then whether stderr is interactive)."""
    global _OVERRIDE
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True, False or None, got {enabled!r}")
    _OVERRIDE = enabled


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether a bar is shown: never on ranks other than 0 of a process group, else
    ``progress`` if given, else :func:`set_progress`'s switch, else
    ``POSTERITY_PROGRESS``, else an interactive stderr or a notebook."""
    if not distributed.is_main():
        return False
    if progress is not None:
        return bool(progress)
    if _OVERRIDE is not None:
        return _OVERRIDE
    env = os.environ.get("POSTERITY_PROGRESS")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    stream = sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    return interactive or _in_notebook()


def progress_bar(iterable: Any = None, *, progress: bool | None = None, **kwargs: Any) -> tqdm:
    """A ``tqdm`` bar (``leave=False``, ``dynamic_ncols=True`` unless given) that is
    disabled unless :func:`progress_enabled` says otherwise."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not progress_enabled(progress), **kwargs)
