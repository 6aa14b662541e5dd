"""Binarized 8x8 handwritten digits, shipped with the package (embedded demo data)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits as ``(images [1797, 64] uint8 in 0..16, labels [1797])``.

    The test part of the UCI optical recognition of handwritten digits data (Alpaydin &
    Kaynak 1998, CC BY 4.0), the set scikit-learn's ``load_digits`` returns, stored in
    ``posterity/datasets/data/digits.npz``.

    Example:
        >>> digit_images()[0].shape
        (1797, 64)
    """
    with resources.as_file(resources.files(__package__) / "data" / "digits.npz") as path:
        with np.load(path) as archive:
            return archive["images"], archive["target"]


def binarized_digits(
    threshold: float = 8.0, seed: int = 0, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, valid, test)`` of the 1797 UCI digits, ``[N, 64]`` in {0, 1}.

    Pixels (0-16) at or above ``threshold`` become 1. The split (1297 / 250 / 250) is a
    fixed permutation drawn with ``seed``. No download: the data ship with the package
    (see :func:`digit_images`).

    Example:
        >>> train, valid, test = binarized_digits()
        >>> tuple(train.shape), tuple(test.shape)
        ((1297, 64), (250, 64))
    """
    pixels = torch.as_tensor(digit_images()[0], dtype=torch.float32)
    binary = (pixels >= threshold).float()
    order = torch.randperm(binary.shape[0], generator=torch.Generator().manual_seed(seed))
    binary = binary[order].to(device)
    return binary[:1297], binary[1297:1547], binary[1547:]
