"""Binarized 8x8 handwritten digits that ship with scikit-learn (embedded demo data)."""

from __future__ import annotations

import torch
from torch import Tensor


def binarized_digits(
    threshold: float = 8.0, seed: int = 0, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, valid, test)`` of the 1797 UCI digits, ``[N, 64]`` in {0, 1}.

    Pixels (0-16) at or above ``threshold`` become 1. The split (1297 / 250 / 250) is a
    fixed permutation drawn with ``seed``. No download: the data ship in scikit-learn.
    """
    from sklearn.datasets import load_digits

    pixels = torch.as_tensor(load_digits().data, dtype=torch.float32)
    binary = (pixels >= threshold).float()
    order = torch.randperm(binary.shape[0], generator=torch.Generator().manual_seed(seed))
    binary = binary[order].to(device)
    return binary[:1297], binary[1297:1547], binary[1547:]
