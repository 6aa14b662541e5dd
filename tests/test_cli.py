"""The command line: each `posterity fit` family trains, evaluates and writes its report;
runs resume from their checkpoint, and `posterity demo` writes one report for all."""

import json
import warnings

import arviz as az
import pytest

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


def test_fit_multi_rate_passes_its_flags_to_the_engine(tmp_path, monkeypatch):
    from posterity.infer.amortized import command

    seen = {}

    class Spy(command.AmortizedVI):
        def __init__(self, model, guide, **kwargs):
            seen.update(kwargs, rank=model.decoder.layers[0].rank,
                        degree=guide.net.layers[0].degree,
                        beta_extension=model.beta_extension)
            super().__init__(model, guide, **kwargs)

    monkeypatch.setattr(command, "AmortizedVI", Spy)
    code = main([
        "fit", "vae", "--data", "digits", "--objective", "multi_rate", "--epochs", "1",
        "--z-dim", "4", "--hidden", "16", "--eval-samples", "20", "--eval-points", "30",
        "--diagnostic-points", "10", "--num-betas", "3", "--out", str(tmp_path / "mr"),
        "--quiet", "--beta-distribution", "0.4,0.8", "--gate-lr-multiplier", "10",
        "--response-rank", "2", "--response-degree", "2", "--scheduler", "cosine",
        "--beta-extension", "0.5",
    ])
    assert code == 0
    assert seen["beta_distribution"] == (0.4, 0.8) and seen["gate_lr_multiplier"] == 10
    assert seen["scheduler"] == "cosine" and seen["rank"] == 2 and seen["degree"] == 2
    assert seen["beta_extension"] == 0.5


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


def test_fit_bnn_with_the_measured_step_size(tmp_path):
    """``--step-size auto``: a constant step per chain measured during the warm-up (20
    draws inside --steps by default), SGHMC at the measured friction; each chain's step
    is in the metrics and in ArviZ."""
    out = tmp_path / "bnn"
    with warnings.catch_warnings():  # a short run: the warm-up may not settle
        warnings.simplefilter("ignore", UserWarning)
        code = main(["fit", "bnn", "--hidden", "8", "--steps", "600", "--samples", "10",
                     "--chains", "2", "--kernel", "sghmc", "--step-size", "auto",
                     "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["thin"] == 600 // (10 + 20) and metrics["updates"] == 600
    steps = az.from_netcdf(str(out / "idata.nc")).sample_stats["step_size"].values
    assert steps.shape == (2, 10) and (steps > 0).all()
    assert metrics["step_size"] == pytest.approx(steps[:, 0].tolist())


def test_fit_ssm_on_a_csv_with_gaps(tmp_path, capsys):
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
                 "--num-particles", "20", "--filter-particles", "100", "--iters", "10",
                 "--chains", "2", "--out", str(out), "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_steps"] == 40 and metrics["missing_steps"] == 1
    assert torch.isfinite(torch.tensor(metrics["log_evidence"]))
    printed = capsys.readouterr().out  # the parameters as the model reads them
    assert "parameters: mu " in printed and ", phi " in printed and ", sigma " in printed
    assert "phi_raw" not in printed and "log_sigma" not in printed
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.posterior["x"].shape == (2, 8, 40, 1)
    assert idata.training_history["step_objective"].shape == (5,)
    page = (out / "report.html").read_text()
    assert "Smoothed states" in page and "Particle filter" in page
    assert "Learned parameters" in page
    # a rerun with more steps continues the learning from the checkpoint
    code = main(["fit", "ssm", "--data", str(series), "--model", "sv", "--steps", "7",
                 "--particles", "20", "--filter-particles", "100", "--iters", "10",
                 "--chains", "2", "--out", str(out), "--quiet"])
    assert code == 0
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.training_history["step_objective"].shape == (7,)


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


VAE_SMALL = ["fit", "vae", "--data", "digits", "-k", "2", "--z-dim", "2", "--hidden", "8",
             "--batch-size", "200", "--eval-samples", "10", "--eval-points", "20",
             "--diagnostic-points", "5", "--quiet"]


def test_a_rerun_resumes_and_a_changed_model_setting_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main([*VAE_SMALL, "--epochs", "1", "--out", out]) == 0
    capsys.readouterr()
    assert main([*VAE_SMALL, "--epochs", "2", "--out", out]) == 0  # epochs may change
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "--fresh starts over" in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    # a rerun of the finished run trains nothing and reports the run's training time
    assert main([*VAE_SMALL, "--epochs", "2", "--out", out]) == 0
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["train_seconds"] == metrics["train_seconds"] > 0

    assert main([*VAE_SMALL, "--epochs", "2", "--activation", "relu", "--out", out]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "--activation" in error and "--fresh" in error

    code = main([*VAE_SMALL, "--epochs", "1", "--activation", "relu", "--fresh", "--out", out])
    assert code == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*VAE_SMALL, "--epochs", "1", "--activation", "relu", "--out", out]) == 0
    notes = capsys.readouterr().err + " ".join(str(w.message) for w in caught)
    assert "fresh" not in notes  # how a call starts is not a setting of the run


def test_every_fit_command_takes_the_shared_flags():
    from posterity.infer.cli import COMMANDS, build_parser

    parser = build_parser()
    shared = ["--out", "o", "--seed", "3", "--fresh", "--quiet", "--debug", "--threads", "2"]
    for command in COMMANDS:
        particles = ["--num-particles", "7"] if command.name != "bnn" else []
        args = parser.parse_args(["fit", command.name, *shared, *particles])
        assert (args.out, args.seed, args.fresh, args.quiet, args.debug, args.threads) == \
            ("o", 3, True, True, True, 2)
        assert args.family is command
        if particles:
            assert args.num_particles == 7
    assert parser.parse_args(["fit", "sbn", "-k", "4"]).num_particles == 4
    assert parser.parse_args(["fit", "ssm", "--particles", "9"]).num_particles == 9


def test_demo_only_vae_writes_one_combined_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--only", "vae", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["vae"] and metrics["vae"]["epochs"] == 1
    assert (out / "vae" / "idata.nc").exists() and (out / "vae" / "checkpoint.pt").exists()
    page = (out / "report.html").read_text()
    assert "posterity demo" in page and "VAE (iwae) on digits" in page
    assert "vae: test log p(x)" in capsys.readouterr().out


def test_demo_parts_go_through_their_commands_checks(tmp_path, capsys):
    """The demo runs each family's part as `posterity fit` would, flag rules included
    (bnn's step size defaults per kernel in its check)."""
    out = tmp_path / "demo"
    assert main(["demo", "--only", "bnn", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["bnn"] and metrics["bnn"]["kernel"] == "sghmc"
    assert "bnn: test RMSE" in capsys.readouterr().out
