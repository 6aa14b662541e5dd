"""Data loaders: binarized MNIST from a path, the environment or ../shared, and the
embedded digits."""

import numpy as np
import pytest
import torch

from posterity.datasets import binarized_digits, binarized_mnist
from posterity.datasets.mnist import unpack


def test_binarized_mnist_has_the_standard_split(mnist):
    train, valid, test = mnist
    assert train.shape == (50000, 784) and valid.shape == (10000, 784)
    assert test.shape == (10000, 784)
    assert train.dtype == torch.float32
    assert set(torch.unique(train).tolist()) == {0.0, 1.0}
    assert abs(train.mean().item() - 0.1306) < 5e-4  # the value shared/data/README states


def _fake_archive(path, rows=3):
    pixels = np.zeros((rows, 784), dtype=np.uint8)
    pixels[:, ::7] = 1
    packed = np.packbits(pixels, axis=1)
    np.savez(path, train=packed, valid=packed[:1], test=packed[:2])
    return pixels


def test_unpack_inverts_packbits():
    pixels = (np.random.default_rng(0).random((4, 784)) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(unpack(np.packbits(pixels, axis=1)), pixels)


def test_loads_from_an_explicit_path_and_from_posterity_data(tmp_path, monkeypatch):
    pixels = _fake_archive(tmp_path / "binarized_mnist.npz")
    train, valid, test = binarized_mnist(tmp_path / "binarized_mnist.npz")
    np.testing.assert_array_equal(train.numpy(), pixels)
    assert (valid.shape[0], test.shape[0]) == (1, 2)
    monkeypatch.setenv("POSTERITY_DATA", str(tmp_path))
    assert binarized_mnist()[0].shape == (3, 784)


def test_offline_without_a_file_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="POSTERITY_DATA.*binarized_mnist_"):
        binarized_mnist(tmp_path / "nowhere.npz")


def test_binarized_digits_ship_with_the_package():
    train, valid, test = binarized_digits()
    assert train.shape == (1297, 64) and valid.shape == (250, 64) and test.shape == (250, 64)
    assert set(torch.unique(train).tolist()) == {0.0, 1.0}
    again = binarized_digits()[0]
    assert torch.equal(train, again)
