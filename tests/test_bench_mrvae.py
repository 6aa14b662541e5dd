"""The Multi-Rate VAE benchmark judges its 1 % target on the mean over seeds.

``bench/mrvae.py --summarize`` reads the results of several seeds and reports, per β, the
excess objective of the MR-VAEs' mean over the β-VAEs' mean and its standard error.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "mrvae.py"


@pytest.fixture(scope="module")
def mrvae():
    spec = importlib.util.spec_from_file_location("bench_mrvae", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(seed, mr, ref, betas=(0.01, 1.0), epochs=200, kl="auto"):
    """What bench/mrvae.py writes for one seed, reduced to the fields the summary reads."""
    table = [{"beta": b, "mr_vae_objective": m, "beta_vae_objective": r}
             for b, m, r in zip(betas, mr, ref)]
    return {"seed": seed, "protocol": "full", "epochs": epochs, "kl": kl,
            "configs": {"default": {"table": table}}}


def test_the_summary_compares_the_means_and_adds_their_standard_errors(mrvae):
    runs = [run(0, (39.0, 97.0), (38.0, 96.0)), run(1, (41.0, 97.4), (40.0, 96.6)),
            run(2, (40.0, 97.2), (39.0, 96.3))]
    low, one = mrvae.seed_summary(runs)
    assert low["beta"] == 0.01 and low["seeds"] == [0, 1, 2]
    assert low["excess_percent"] == pytest.approx(100 * (40.0 / 39.0 - 1))
    # each side's sample variance over three seeds is 1: sqrt(1/3 + 1/3) nats
    assert low["standard_error_percent"] == pytest.approx(100 * math.sqrt(2 / 3) / 39.0)
    mr_var, ref_var = 0.04, 0.09
    assert one["excess_percent"] == pytest.approx(100 * (97.2 / 96.3 - 1))
    assert one["standard_error_percent"] == pytest.approx(
        100 * math.sqrt(mr_var / 3 + ref_var / 3) / 96.3)


def test_one_seed_has_no_standard_error(mrvae):
    row, _ = mrvae.seed_summary([run(0, (39.0, 97.0), (38.0, 96.0))])
    assert row["excess_percent"] == pytest.approx(100 / 38)
    assert math.isnan(row["standard_error_percent"])


@pytest.mark.parametrize("runs, message", [
    ([], "at least one run"),
    ([run(0, (1, 1), (1, 1)), run(1, (1, 1), (1, 1), epochs=20)], "different protocols, epochs"),
    ([run(0, (1, 1), (1, 1)), run(1, (1, 1), (1, 1), kl="draws")], "or rate estimates"),
    ([run(0, (1, 1), (1, 1)), run(0, (1, 1), (1, 1))], "the same seed twice"),
    ([run(0, (1, 1), (1, 1)), run(1, (1, 1), (1, 1), betas=(0.1, 1.0))], "different grids"),
])
def test_runs_that_cannot_be_averaged_are_refused(mrvae, runs, message):
    with pytest.raises(ValueError, match=message):
        mrvae.seed_summary(runs)


def test_the_command_prints_the_summary_of_result_files(tmp_path):
    paths = []
    for seed, (mr, ref) in enumerate([((39.0, 97.0), (38.0, 96.0)),
                                      ((41.0, 97.4), (40.0, 96.6))]):
        path = tmp_path / f"mrvae_full_seed{seed}.json"
        path.write_text(json.dumps(run(seed, mr, ref)))
        paths.append(str(path))
    done = subprocess.run([sys.executable, str(BENCH), "--summarize", *paths],
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("default/beta_1/mean_of_2_seeds: MR-VAE 97.20 beta-VAE 96.30")
    assert f"excess {100 * (97.2 / 96.3 - 1):+.2f} %" in lines[1]


def test_several_seeds_run_one_after_another_then_print_their_mean(mrvae, monkeypatch, tmp_path,
                                                                     capsys):
    def fake_run_config(name, config, data, test, protocol, epochs, lr, num_samples, seed):
        return {"table": [{"beta": 1.0, "mr_vae_objective": 97.0 + seed,
                           "beta_vae_objective": 96.0 + seed}]}

    monkeypatch.setattr(mrvae, "run_config", fake_run_config)
    monkeypatch.setattr(mrvae, "load", lambda n: (torch.zeros(4, 3), torch.zeros(2, 3), "toy"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mrvae.py", "--seed", "0", "1", "--configs", "default"])
    mrvae.main()
    files = sorted(p.name for p in (tmp_path / "bench_out").iterdir())
    assert files == ["mrvae_short.json", "mrvae_short_seed1.json"]
    assert json.loads((tmp_path / "bench_out" / files[1]).read_text())["seed"] == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("default/beta_1/mean_of_2_seeds: MR-VAE 97.50 beta-VAE 96.50")


@pytest.mark.parametrize("argv, message", [
    (["--seed", "0", "0"], "names a seed twice"),
    (["--seed", "0", "1", "--out", "x.json"], "one seed"),
])
def test_seed_lists_that_cannot_be_run_are_refused(mrvae, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(sys, "argv", ["mrvae.py", *argv])
    with pytest.raises(SystemExit):
        mrvae.main()
    assert message in capsys.readouterr().err


def test_summarizing_files_without_the_configuration_asked_for_fails(tmp_path):
    path = tmp_path / "mrvae_full.json"
    path.write_text(json.dumps(run(0, (39.0, 97.0), (38.0, 96.0))))
    done = subprocess.run([sys.executable, str(BENCH), "--summarize", str(path),
                           "--configs", "tuned"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no configuration of ['tuned']" in done.stderr


def test_the_gates_add_no_matrix_products_and_the_low_rank_weights_add_their_own(mrvae):
    from posterity.guides import GaussianEncoder
    from posterity.infer import AmortizedVI
    from posterity.models import VAE

    def flops(**multi):
        objective = {"objective": "multi_rate"} if multi else {}
        vi = AmortizedVI(VAE(12, 3, (8,), **multi), GaussianEncoder(12, 3, (8,), **multi),
                         **objective)
        return mrvae.update_flops(vi, torch.zeros(5, 12))

    plain = flops()
    assert flops(multi_rate=True, response_rank=0) == plain
    rank_one = flops(multi_rate=True, response_rank=1)
    assert plain < rank_one < flops(multi_rate=True, response_rank=2)


def test_the_mr_vae_of_the_full_protocol_costs_023_of_five_beta_vaes_in_matrix_products(mrvae):
    """The README's compute figure, counted on the full protocol's architecture."""
    from posterity.guides import GaussianEncoder
    from posterity.infer import AmortizedVI
    from posterity.models import VAE

    def flops(**multi):
        protocol = mrvae.PROTOCOLS["full"]
        sizes = (784, protocol["z_dim"], protocol["hidden"])
        objective = {"objective": "multi_rate"} if multi else {}
        vi = AmortizedVI(VAE(*sizes, **multi), GaussianEncoder(*sizes, **multi), **objective)
        return mrvae.update_flops(vi, torch.zeros(mrvae.BATCH, 784))

    ratio = flops(multi_rate=True) / (len(mrvae.BETAS) * flops())
    assert round(ratio, 2) == 0.23


def test_single_beta_networks_serve_one_beta_each(mrvae, monkeypatch):
    """``--single-beta`` trains the MR-VAE's networks once per β, on β within 5 % of it
    and nothing below, and scores each at its own β."""
    from posterity.datasets import binarized_digits

    served = []
    train_model = mrvae.train_model

    def recording(*args, **kwargs):
        model, guide, *rest = train_model(*args, **kwargs)
        served.append((guide.standardize.training_range, kwargs["served"]))
        return (model, guide, *rest)

    monkeypatch.setattr(mrvae, "train_model", recording)
    train, _, test = binarized_digits()
    rows = mrvae.single_beta_networks(train[:200], test[:20], {"z_dim": 3, "hidden": (8,)},
                                      1, 1e-3, 2, betas=(0.1, 10.0))
    assert [row["beta"] for row in rows] == [0.1, 10.0]
    for row, (trained_on, serves) in zip(rows, served):
        assert serves == pytest.approx((row["beta"] / 1.05, row["beta"] * 1.05))
        assert trained_on == pytest.approx(serves)  # no extension below
        assert row["objective"] == pytest.approx(row["distortion"] + row["beta"] * row["rate"])
