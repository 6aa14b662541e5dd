"""ArviZ conversion: ArviZ reads the result back (summary, R-hat, ESS, PSIS k-hat), the
k-hat flags a failing guide, and the HTML report renders."""

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from programs import PosteriorProposal

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, report, to_inference_data
from posterity.infer.amortized.inference_data import amortized_inference_data
from posterity.models import VAE, LinearGaussianVAE


@pytest.fixture
def trained():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((200, 16), 0.3))
    vi = AmortizedVI(VAE(16, 3, (8,)), GaussianEncoder(16, 3, (8,)), objective="iwae",
                     num_particles=3, lr=1e-2)
    vi.fit(x, epochs=3, batch_size=50, valid=x[:50], progress=False, seed=0)
    return vi, x


def test_groups_shapes_and_dims(trained):
    vi, x = trained
    idata = to_inference_data(vi, x[:10], num_samples=120, num_chains=4)
    assert {"posterior", "sample_stats", "observed_data", "amortization",
            "training_history"} <= set(idata.groups())
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "z_dim_0")
    assert idata.posterior["z"].shape == (4, 30, 10, 3)
    assert idata.sample_stats["log_importance_weight"].shape == (4, 30, 10)
    assert idata.amortization["pareto_k"].shape == (10,)
    assert idata.training_history["valid_iwae"].sizes["epoch"] == 3
    assert idata.posterior.attrs["objective"] == "iwae"


def test_arviz_reads_it_back(trained, tmp_path):
    vi, x = trained
    pyro.set_rng_seed(0)
    idata = to_inference_data(vi, x[:5], num_samples=4000, num_chains=4)
    summary = az.summary(idata, var_names=["z"], round_to="none")
    assert len(summary) == 5 * 3
    # Independent draws split in chains: R-hat is 1 up to noise of about
    # 1/sqrt(draws per chain) ~ 0.003 here, and the bulk ESS is near 4000.
    assert (summary["r_hat"] < 1.01).all()
    assert (summary["ess_bulk"] > 3000).all()
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path), engine="h5netcdf")
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    np.testing.assert_allclose(back.amortization["pareto_k"], idata.amortization["pareto_k"])


def test_khat_flags_the_data_points_where_the_guide_fails(diagnostics_report):
    torch.manual_seed(2)
    model = LinearGaussianVAE(6, 2, noise_scale=0.6, learn_noise=False)
    x = model.marginal().sample((40,))
    pyro.set_rng_seed(0)
    wide = amortized_inference_data(model, PosteriorProposal(model, 1.5), x, num_samples=2000)
    narrow = amortized_inference_data(model, PosteriorProposal(model, 0.3), x,
                                      num_samples=2000)
    k_wide = wide.amortization["pareto_k"].values
    k_narrow = narrow.amortization["pareto_k"].values
    # A proposal wider than the posterior has bounded weights (true k <= 0). For a
    # Gaussian proposal r times as wide as a Gaussian target (r < 1) the weights have
    # P(w > t) ~ t^(-1/k) with k = 1 - r^2: at r = 0.3 (marginal scales), k = 0.91.
    assert np.mean(k_wide < 0.5) >= 0.9
    assert np.mean(k_narrow > 0.7) >= 0.9
    diagnostics_report.add("PSIS k-hat: wide proposal (inflation 1.5)", wide)
    diagnostics_report.add("PSIS k-hat: narrow proposal (inflation 0.3)", narrow)


def test_report_is_self_contained_html(trained, tmp_path):
    vi, x = trained
    path = report(to_inference_data(vi, x[:20], num_samples=100), tmp_path / "r" / "report.html")
    text = path.read_text()
    for heading in ("Posterior summary", "PSIS k̂", "Training history", "objective"):
        assert heading in text
    assert text.count("data:image/png;base64") >= 2
    assert "http" not in text.replace("http-equiv", "")


def test_to_inference_data_rejects_what_is_not_a_result():
    with pytest.raises(TypeError, match="needs a posterity engine or result.*got dict"):
        to_inference_data({})


def test_num_samples_must_split_into_chains(trained):
    vi, x = trained
    with pytest.raises(ValueError, match="multiple of num_chains"):
        to_inference_data(vi, x[:2], num_samples=10, num_chains=3)
