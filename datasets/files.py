"""Data named on the command line: embedded sets by name, or files (``.npz``, ``.npy``,
``.csv``) checked before any work starts.

Every problem with a file raises :class:`DataError`, whose message names the file and
what is wrong with it (the command line prints it after ``--data``).
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .digits import binarized_digits
from .mnist import binarized_mnist
from .series import gbp_usd
from .uci import concrete


class DataError(ValueError):
    """A data set that cannot be used as asked; the message names the file."""


def read_csv(path: str | Path, *, allow_missing: bool = False,
             columns: Sequence[int | str] | None = None) -> np.ndarray:
    """A comma-separated numeric table as a ``[rows, columns]`` float64 array.

    A first row is a header, and skipped, when one of its cells is text above numbers,
    or text of another form than the cells below it (runs of letters and of digits
    compared: ``date`` above ``2020-01-02``, not ``2020-1-9`` above ``2020-1-10``), so a
    headerless file with a date column keeps its first row; a file of one row is a
    header if any cell is text. Blank lines at
    the end are ignored. With
    ``allow_missing`` an empty cell or ``nan`` is NaN; otherwise it is an error.
    ``columns`` (indices, or names from the header) keeps those columns, in that order,
    before any cell is read as a number: other columns (a date) may hold text.

    Raises:
        DataError: no data rows, a non-numeric cell, rows of different widths, or a
            missing value where none is allowed; the message gives the line number.
        ValueError: a column that is not in the table.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
        >>> _ = open(path, "w").write("a,b\\n1,2\\n3,4\\n")
        >>> read_csv(path).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
        >>> _ = open(path, "w").write("date,ret\\n2020-01-02,0.5\\n2020-01-03,-0.1\\n")
        >>> read_csv(path, columns=["ret"]).tolist()
        [[0.5], [-0.1]]
        >>> _ = open(path, "w").write("2020-01-02,0.5\\n2020-01-03,-0.1\\n")  # no header
        >>> read_csv(path, columns=[1]).tolist()
        [[0.5], [-0.1]]
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text (CSV) file") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path} is empty")

    def parse(cells: list[str]) -> list[float]:
        return [float(cell) if cell.strip() else math.nan for cell in cells]

    header = [cell.strip() for cell in lines[0].split(",")]
    first = 1 if _is_header(header, [line.split(",") for line in lines[1:4]]) else 0
    if not first:
        header = []
    if first == len(lines):
        raise DataError(f"{path} has a header but no data rows")
    keep = None if columns is None else _column_indices(path, columns, header,
                                                        len(lines[first].split(",")))
    rows, width = [], None
    for number, line in enumerate(lines[first:], start=first + 1):
        cells = line.split(",")
        if width is None:
            width = len(cells)
        elif len(cells) != width:
            raise DataError(f"{path} line {number} has {len(cells)} columns, line {first + 1} "
                            f"has {width}")
        try:
            row = parse(cells if keep is None else [cells[c] for c in keep])
        except ValueError as error:
            hint = "" if columns is not None else " (pick the numeric columns by index or name)"
            raise DataError(f"{path} line {number}: not a number ({error}){hint}") from None
        if not allow_missing and any(math.isnan(v) for v in row):
            raise DataError(f"{path} line {number} has an empty or NaN cell")
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell) if cell.strip() else None
    except ValueError:
        return False
    return True


def _form(cell: str) -> str:
    """Runs of letters as ``a``, of digits as ``9``: ``2020-01-02`` -> ``9-9-9``."""
    return re.sub(r"\d+", "9", re.sub(r"[^\W\d_]+", "a", cell.strip()))


def _is_header(first: list[str], below: list[list[str]]) -> bool:
    """Whether ``first`` names the columns of the rows ``below`` it (a few of them)."""
    if not below:
        return not all(_is_number(cell) for cell in first)
    for column, cell in enumerate(first):
        if _is_number(cell):
            continue
        cells = [row[column] for row in below if column < len(row)]
        if any(_is_number(c) for c in cells) or _form(cell) not in {_form(c) for c in cells}:
            return True
    return False


def _column_indices(path: Path, columns: Sequence[int | str], header: list[str],
                    width: int) -> list[int]:
    """``columns`` (indices, or names in ``header``) as indices into rows of ``width``."""
    indices = []
    for column in columns:
        if isinstance(column, str) and not column.lstrip("-").isdigit():
            if column not in header:
                raise ValueError(f"columns must be indices or names in the header of {path}; "
                                 f"it has no column {column!r}"
                                 + (f" (header: {', '.join(header)})" if header
                                    else " and no header"))
            indices.append(header.index(column))
            continue
        index = int(column)
        if not -width <= index < width:
            raise ValueError(f"columns must be indices in [{-width}, {width - 1}] (the data "
                             f"has {width}), got [{index}]")
        indices.append(index % width)
    return indices


def _existing(spec: str, names: str) -> Path:
    path = Path(spec)
    if not path.is_file():
        reason = "a folder" if path.is_dir() else "no such file"
        raise DataError(f"expected {names} or a file, got {spec!r} ({reason})")
    return path


def _split(data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    data = data[order]
    n_train, n_valid = int(0.8 * len(data)), int(0.1 * len(data))
    return data[:n_train], data[n_train : n_train + n_valid], data[n_train + n_valid :]


def _check_matrix(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or 0 in array.shape:
        raise DataError(f"{path}: {name} must be a non-empty [rows, columns] array, got shape "
                        f"{tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise DataError(f"{path}: {name} must be numeric, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: {name} holds NaN or infinite values")
    return array


def load_matrix(spec: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, valid, test)`` ``[N, D]`` float32 tensors for a ``--data`` value.

    ``spec`` is ``digits`` (embedded, :func:`binarized_digits`), ``mnist``
    (:func:`binarized_mnist`), an ``.npz`` with ``train``/``valid``/``test`` arrays
    (binarized MNIST packed with ``np.packbits`` is recognized), or one ``.npy`` or
    ``.csv`` array (at least 10 rows) split 80/10/10 by a fixed permutation.

    Raises:
        DataError: a file that is missing, unreadable, ragged, non-numeric, not finite,
            or too small to split.

    Example:
        >>> train, valid, test = load_matrix("digits")
        >>> train.shape[1]
        64
    """
    if spec == "digits":
        return binarized_digits()
    if spec == "mnist":
        return binarized_mnist()
    path = _existing(spec, "'digits', 'mnist'")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in ("train", "valid", "test") if k not in archive]
                if missing:
                    raise DataError(f"{path} lacks the arrays {missing} (expected train, "
                                    f"valid and test; found {sorted(archive.files)})")
                arrays = {k: archive[k] for k in ("train", "valid", "test")}
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            if isinstance(error, DataError):
                raise
            raise DataError(f"{path} is not a readable .npz archive ({error})") from None
        if arrays["train"].dtype == np.uint8 and arrays["train"].ndim == 2 \
                and arrays["train"].shape[1] == 98:
            return binarized_mnist(path)
        widths = set()
        for name, array in arrays.items():
            widths.add(_check_matrix(path, name, array).shape[1])
        if len(widths) > 1:
            raise DataError(f"{path}: train, valid and test have different widths "
                            f"{[a.shape[1] for a in arrays.values()]}")
        return tuple(torch.as_tensor(a, dtype=torch.float32) for a in arrays.values())
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{path} is not a readable .npy array ({error})") from None
    else:
        array = read_csv(path)
    _check_matrix(path, "the array", array)
    if len(array) < 10:
        raise DataError(f"{path} has {len(array)} rows; at least 10 are needed for the "
                        f"80/10/10 train/valid/test split")
    return _split(torch.as_tensor(array, dtype=torch.float32))


def load_table(spec: str, target: int = -1) -> tuple[Tensor, Tensor]:
    """``(X [N, D], y [N])`` float32 for a ``--data`` value: ``concrete`` (embedded,
    :func:`concrete`) or a CSV file whose column ``target`` (Python index) is ``y``.

    Raises:
        DataError: an unreadable file, or one with fewer than two columns or rows.
        ValueError: ``target`` outside the table's columns.

    Example:
        >>> X, y = load_table("concrete")
        >>> tuple(X.shape)
        (1030, 8)
    """
    if spec == "concrete":
        X, y = concrete()
        columns = X.shape[1] + 1
        if not -columns <= target < columns:
            raise ValueError(f"target must be a column index in [{-columns}, {columns - 1}], "
                             f"got {target}")
        if target in (-1, columns - 1):
            return X, y
        table = torch.cat([X, y[:, None]], 1)
    else:
        path = _existing(spec, "'concrete'")
        table = torch.as_tensor(read_csv(path), dtype=torch.float32)
        if table.shape[1] < 2:
            raise DataError(f"{path} has {table.shape[1]} column; the inputs and the target "
                            f"need at least 2")
        if table.shape[0] < 2:
            raise DataError(f"{path} has {table.shape[0]} row; at least 2 are needed")
    columns = table.shape[1]
    if not -columns <= target < columns:
        raise ValueError(f"target must be a column index in [{-columns}, {columns - 1}], "
                         f"got {target}")
    target %= columns
    keep = [c for c in range(columns) if c != target]
    return table[:, keep], table[:, target]


def load_series(spec: str, columns: Sequence[int | str] | None = None) -> Tensor:
    """``[T, obs_dim]`` float32 observations for a ``--data`` value, NaN where missing.

    ``spec`` is ``gbp-usd`` (embedded, :func:`posterity.datasets.gbp_usd`: daily
    GBP/USD log-returns in percent) or a CSV file (header optional; empty cells and
    ``nan`` are missing observations); ``columns`` picks the observed columns, by index
    or header name (the others may hold text, such as dates).

    Raises:
        DataError: an unreadable file, or a series (or column) with no observed value.
        ValueError: ``columns`` outside the table.

    Example:
        >>> load_series("gbp-usd").shape
        torch.Size([750, 1])
    """
    if spec == "gbp-usd":
        ys, path = gbp_usd(), spec
    else:
        path = _existing(spec, "'gbp-usd'")
        ys = torch.as_tensor(read_csv(path, allow_missing=True, columns=columns or None),
                             dtype=torch.float32)
        columns = None  # picked while reading
    if columns:
        width = ys.shape[1]
        bad = [c for c in columns if isinstance(c, str) or not -width <= c < width]
        if bad:
            raise ValueError(f"columns must be indices in [{-width}, {width - 1}] (the data has "
                             f"{width}), got {bad}")
        ys = ys[:, columns]
    observed = ~torch.isnan(ys)
    if not observed.any():
        raise DataError(f"{path}: every value is missing (empty or NaN)")
    empty = [c for c in range(ys.shape[1]) if not observed[:, c].any()]
    if empty:
        raise DataError(f"{path}: column(s) {empty} hold no observed value")
    if not torch.isfinite(ys[observed]).all():
        raise DataError(f"{path} holds infinite values")
    return ys
