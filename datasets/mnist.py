"""Statically binarized MNIST (Larochelle & Murray 2011): 50000 / 10000 / 10000."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FILENAME = "binarized_mnist.npz"
SPLITS = ("train", "valid", "test")
URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _candidates(path: str | os.PathLike | None) -> list[Path]:
    if path is not None:
        return [Path(path)]
    found = []
    env = os.environ.get("POSTERITY_DATA")
    if env:
        found.append(Path(env))
    found += [
        Path.cwd().parent / "shared" / "data",
        _PACKAGE_ROOT.parent / "shared" / "data",
        Path.home() / ".cache" / "posterity",
    ]
    return found


def _resolve(candidate: Path) -> Path | None:
    if candidate.is_dir():
        candidate = candidate / FILENAME
    return candidate if candidate.is_file() else None


def _download(target: Path) -> Path:
    arrays = {}
    for split in SPLITS:
        with urllib.request.urlopen(URL.format(split=split), timeout=60) as response:
            rows = np.loadtxt(response, dtype=np.uint8)
        arrays[split] = np.packbits(rows, axis=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, **arrays)
    return target


def unpack(packed: np.ndarray) -> np.ndarray:
    """Rows packed with ``np.packbits`` over 784 pixels -> ``[N, 784]`` float32 in {0, 1}."""
    return np.unpackbits(packed, axis=1)[:, :784].astype(np.float32)


def binarized_mnist(
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, valid, test)`` float tensors in {0, 1} of shape ``[N, 784]``.

    Looks for ``binarized_mnist.npz`` (arrays ``train``, ``valid``, ``test`` packed with
    ``np.packbits``) at ``path`` (a file or folder), then in ``$POSTERITY_DATA``,
    ``../shared/data`` and ``~/.cache/posterity``. Where none exists and ``download`` is
    true it fetches the standard ``.amat`` files into ``~/.cache/posterity``.

    Raises:
        FileNotFoundError: offline with no file, saying where to put one.
    """
    candidates = _candidates(path)
    for candidate in candidates:
        resolved = _resolve(candidate)
        if resolved is not None:
            break
    else:
        resolved = None
        if download and path is None:
            try:
                resolved = _download(Path.home() / ".cache" / "posterity" / FILENAME)
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = f"the download failed ({error})"
        else:
            reason = "downloading is off" if not download else "the given path has no file"
        if resolved is None:
            looked = ", ".join(str(c) for c in candidates)
            raise FileNotFoundError(
                f"binarized MNIST not found (looked in {looked}) and {reason}. Put "
                f"{FILENAME} (keys train/valid/test, rows packed with np.packbits) in one "
                f"of those places or set POSTERITY_DATA to its folder; the source files "
                f"are {URL.format(split='{train,valid,test}')}"
            )
    with np.load(resolved) as archive:
        missing = [s for s in SPLITS if s not in archive]
        if missing:
            raise ValueError(f"{resolved} lacks the arrays {missing}")
        return tuple(torch.from_numpy(unpack(archive[s])).to(device) for s in SPLITS)
