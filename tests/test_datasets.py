"""Data loaders: binarized MNIST from a path, the environment or ../shared; the digits,
concrete and GBP/USD sets shipped with the package; the files of the command line."""

import numpy as np
import pytest
import torch

from posterity.datasets import (
    DataError,
    binarized_digits,
    binarized_mnist,
    concrete,
    digit_images,
    gbp_usd,
    gbp_usd_rates,
    load_matrix,
    load_series,
    load_table,
)
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


# --- data shipped with the package, and the loaders of the command line -----------------


def test_gbp_usd_is_the_percent_log_return_series_of_the_shipped_rates():
    dates, rates = gbp_usd_rates()
    assert len(dates) == len(rates) == 751 and str(dates[-1]) == "1999-12-31"
    ys = gbp_usd()
    assert ys.shape == (750, 1) and ys.dtype == torch.float32
    expected = 100 * np.log(rates[1:] / rates[:-1])
    np.testing.assert_allclose(ys[:, 0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_gbp_usd_matches_the_series_in_particles():
    datasets = pytest.importorskip("particles.datasets")
    reference = torch.as_tensor(datasets.GBP_vs_USD_9798().data, dtype=torch.float32)
    assert torch.equal(gbp_usd()[:, 0], reference)


def test_concrete_and_digits_ship_with_the_package():
    X, y = concrete()
    assert X.shape == (1030, 8) and y.shape == (1030,)
    assert 2 < float(y.min()) and float(y.max()) < 83  # compressive strength in MPa
    images, labels = digit_images()
    assert images.shape == (1797, 64) and images.max() == 16 and set(labels) == set(range(10))


def test_digits_are_the_set_scikit_learn_ships():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    np.testing.assert_array_equal(digit_images()[0], sklearn_datasets.load_digits().data)


def test_a_csv_matrix_is_split_80_10_10_and_a_header_is_skipped(tmp_path):
    rows = np.arange(40 * 3, dtype=float).reshape(40, 3)
    np.savetxt(tmp_path / "m.csv", rows, delimiter=",", header="a,b,c", comments="")
    train, valid, test = load_matrix(str(tmp_path / "m.csv"))
    assert (len(train), len(valid), len(test)) == (32, 4, 4)
    together = torch.cat([train, valid, test])
    assert sorted(together[:, 0].tolist()) == rows[:, 0].tolist()  # a permutation of the rows
    np.save(tmp_path / "m.npy", rows)
    assert torch.equal(load_matrix(str(tmp_path / "m.npy"))[0], train)
    np.savez(tmp_path / "s.npz", train=rows[:5], valid=rows[5:7], test=rows[7:9])
    assert [len(t) for t in load_matrix(str(tmp_path / "s.npz"))] == [5, 2, 2]


@pytest.mark.parametrize("content, complaint", [
    ("", "is empty"),
    ("a,b\n", "header but no data"),
    ("1,2\n3\n", "line 2 has 1 columns"),
    ("1,2\n3,x\n", "line 2: not a number"),
    ("1,2\n3,\n", "line 2 has an empty or NaN cell"),
    ("1,2\n3,4\n", "at least 10 are needed"),
])
def test_a_bad_matrix_file_is_a_data_error_naming_the_file(tmp_path, content, complaint):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=complaint) as error:
        load_matrix(str(path))
    assert str(path) in str(error.value)


def test_unknown_names_and_unreadable_archives_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="expected 'digits', 'mnist'.*no such file"):
        load_matrix("digitz")
    (tmp_path / "x.npz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_matrix(str(tmp_path / "x.npz"))
    np.savez(tmp_path / "k.npz", train=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"lacks the arrays \['valid', 'test'\]"):
        load_matrix(str(tmp_path / "k.npz"))


def test_a_table_takes_its_target_column_from_anywhere(tmp_path):
    rows = np.arange(12, dtype=float).reshape(4, 3)
    np.savetxt(tmp_path / "t.csv", rows, delimiter=",")
    X, y = load_table(str(tmp_path / "t.csv"), target=0)
    assert y.tolist() == rows[:, 0].tolist() and X.tolist() == rows[:, 1:].tolist()
    assert load_table(str(tmp_path / "t.csv"))[1].tolist() == rows[:, 2].tolist()
    with pytest.raises(ValueError, match=r"target must be a column index in \[-3, 2\], got 3"):
        load_table(str(tmp_path / "t.csv"), target=3)
    X, y = load_table("concrete", target=0)
    assert X.shape == (1030, 8) and torch.equal(y, concrete()[0][:, 0])


def test_a_series_keeps_its_gaps_as_nan_and_refuses_one_with_no_value(tmp_path):
    (tmp_path / "s.csv").write_text("a,b\n1,2\n,4\n5,nan\n")
    ys = load_series(str(tmp_path / "s.csv"))
    assert ys.shape == (3, 2) and torch.isnan(ys).sum() == 2
    assert load_series(str(tmp_path / "s.csv"), [1]).shape == (3, 1)
    with pytest.raises(ValueError, match="columns must be indices"):
        load_series(str(tmp_path / "s.csv"), [2])
    (tmp_path / "n.csv").write_text("nan\n\nnan\n")
    with pytest.raises(DataError, match="every value is missing"):
        load_series(str(tmp_path / "n.csv"))
    assert torch.equal(load_series("gbp-usd"), gbp_usd())


def test_a_series_picks_columns_by_name_and_skips_text_columns(tmp_path):
    path = tmp_path / "dated.csv"
    path.write_text("date,ret,vol\n2020-01-02,0.5,1\n2020-01-03,,2\n2020-01-06,-0.1,3\n")
    ys = load_series(str(path), ["ret"])
    assert ys.shape == (3, 1) and torch.isnan(ys[1, 0]) and float(ys[2, 0]) == pytest.approx(-0.1)
    assert load_series(str(path), ["vol", 1]).tolist()[0] == [1.0, 0.5]
    with pytest.raises(DataError, match=r"line 2: not a number .*pick the numeric columns"):
        load_series(str(path))
    with pytest.raises(ValueError, match=r"no column 'price' \(header: date, ret, vol\)"):
        load_series(str(path), ["price"])
    with pytest.raises(ValueError, match=r"columns must be indices in \[-3, 2\]"):
        load_series(str(path), [3])


def test_a_headerless_series_keeps_its_first_row_when_only_a_skipped_column_has_text(tmp_path):
    path = tmp_path / "dated.csv"
    path.write_text("2020-01-02,0.5\n2020-01-03,-0.1\n2020-01-06,0.2\n")
    assert load_series(str(path), [1]).flatten().tolist() == pytest.approx([0.5, -0.1, 0.2])
    path.write_text("date,ret\n2020-01-02,0.5\n2020-01-03,-0.1\n")
    assert load_series(str(path), [1]).flatten().tolist() == pytest.approx([0.5, -0.1])
    path.write_text("date,2019,2020\n2020-01-02,0.5,0.7\n")  # numbers as column names
    assert load_series(str(path), [1, 2]).tolist() == [pytest.approx([0.5, 0.7])]
    path.write_text("2020-1-9,AAPL,0.3\n2020-1-10,GOOGL,0.1\n")  # forms of other widths
    assert load_series(str(path), [2]).flatten().tolist() == pytest.approx([0.3, 0.1])
    path.write_text("0.5,0.7\n")  # one row of numbers is data
    assert load_series(str(path)).tolist() == [pytest.approx([0.5, 0.7])]
