"""The command line: `posterity fit vae` trains, evaluates and writes its report."""

import json

import arviz as az

from posterity.infer.cli import main


def test_fit_vae_writes_report_idata_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([
        "fit", "vae", "--data", "digits", "--objective", "iwae", "-k", "3", "--epochs", "2",
        "--z-dim", "4", "--hidden", "16", "--eval-samples", "50", "--eval-points", "40",
        "--diagnostic-points", "10", "--out", str(out), "--quiet",
    ])
    assert code == 0
    for name in ("report.html", "idata.nc", "metrics.json", "checkpoint.pt"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test_points"] == 40
    assert metrics["test_log_likelihood"] < 0
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.posterior["z"].shape[2:] == (10, 4)
    printed = capsys.readouterr().out
    assert "report:" in printed and "test log p(x)" in printed


def test_fit_vae_takes_a_csv(tmp_path):
    import numpy as np

    rows = (np.random.default_rng(0).random((60, 5)) > 0.5).astype(float)
    np.savetxt(tmp_path / "data.csv", rows, delimiter=",")
    code = main([
        "fit", "vae", "--data", str(tmp_path / "data.csv"), "--epochs", "1", "--z-dim", "2",
        "--hidden", "4", "--eval-samples", "10", "--out", str(tmp_path / "o"), "--quiet",
    ])
    assert code == 0


def test_fit_multi_rate_writes_the_rate_distortion_curve(tmp_path):
    out = tmp_path / "mr"
    code = main([
        "fit", "vae", "--data", "digits", "--objective", "multi_rate", "--epochs", "1",
        "--z-dim", "4", "--hidden", "16", "--eval-samples", "20", "--eval-points", "30",
        "--diagnostic-points", "10", "--num-betas", "6", "--out", str(out), "--quiet",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rate_distortion"]["rate"]) == 6
    assert "Rate-distortion curve" in (out / "report.html").read_text()
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.rate_distortion["distortion"].sizes["beta"] == 6


def test_fit_bnn_on_a_csv_writes_metrics_and_report(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = X @ np.array([1.0, -1.0, 0.5]) + 0.1 * rng.normal(size=80)
    np.savetxt(tmp_path / "table.csv", np.column_stack([X, y]), delimiter=",",
               header="a,b,c,y", comments="")
    out = tmp_path / "bnn"
    code = main([
        "fit", "bnn", "--data", str(tmp_path / "table.csv"), "--hidden", "8",
        "--steps", "400", "--samples", "20", "--chains", "2", "--kernel", "sgld",
        "--step-size", "1e-3", "--out", str(out), "--quiet",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_points"] == 8 and np.isfinite(metrics["log_likelihood"])
    text = (out / "report.html").read_text()
    assert "Step-size schedule" in text and "traces" in text
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.log_likelihood["obs"].shape == (2, 20, 8)


def test_fit_ssm_on_a_csv_with_gaps(tmp_path):
    """A CSV series with a header and an empty cell: the gap is a missing observation, the
    parameters are learned, and the report holds the filter, the paths and the traces."""
    import torch

    from posterity.models import StochasticVolatility

    ys = StochasticVolatility().simulate(40).observations[:, 0]
    lines = ["return"] + [f"{float(y):.5f}" for y in ys]
    lines[10] = ""
    series = tmp_path / "returns.csv"
    series.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sv"
    code = main(["fit", "ssm", "--data", str(series), "--model", "sv", "--steps", "5",
                 "--particles", "20", "--filter-particles", "100", "--iters", "10",
                 "--chains", "2", "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_steps"] == 40 and metrics["missing_steps"] == 1
    assert torch.isfinite(torch.tensor(metrics["log_evidence"]))
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.posterior["x"].shape == (2, 8, 40, 1)
    assert idata.learning_history["objective"].shape == (5,)
    page = (out / "report.html").read_text()
    assert "Smoothed states" in page and "Particle filter" in page
    assert "Parameter learning" in page


def test_fit_sbn_writes_report_idata_and_metrics(tmp_path, capsys):
    out = tmp_path / "sbn"
    code = main(["fit", "sbn", "--data", "digits", "--algorithm", "nbihm", "--layers", "8",
                 "-k", "3", "--epochs", "1", "--valid-points", "50", "--eval-samples", "50",
                 "--eval-points", "30", "--diagnostic-points", "10", "--out", str(out),
                 "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algorithm"] == "nbihm" and metrics["test_points"] == 30
    assert metrics["test_log_likelihood"] < 0 and metrics["log_partition"] <= 0.05
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.posterior["z_1"].shape[-2:] == (10, 8)
    page = (out / "report.html").read_text()
    assert "Samples from the model" in page and "Training history" in page
    assert "test log p(x)" in capsys.readouterr().out
