"""Reports: every family's sections render when their groups are present and only then,
report.py knows no family, numbers are rounded, key figures come first, and the pages
are self-contained."""

import inspect
import re

import arviz as az
import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
import xarray as xr

import posterity.infer  # noqa: F401  (imports every family, which registers its sections)
from posterity.guides import GaussianEncoder
from posterity.infer import report as report_module
from posterity.infer.amortized.inference_data import amortized_inference_data, reconstructions
from posterity.infer.inference_data import GROUPS, history_inference_data, to_inference_data
from posterity.infer.report import (
    IndexEntry,
    combined_report,
    format_estimate,
    image_grid,
    register_section,
    render,
    report,
    sections,
)
from posterity.infer.train import History
from posterity.models import VAE

FAMILY_GROUPS = ("amortization", "rate_distortion", "model_samples", "filtering", "smoothing")
rng = np.random.default_rng(0)


def _amortization(n=12):
    k = np.linspace(0.0, 1.0, n)
    data = {"pareto_k": k, "log_likelihood": -20 - k, "relative_ess": 1 - k,
            "rate": 3 + k, "distortion": 17 + k}
    return xr.Dataset({name: ("data", v) for name, v in data.items()},
                      coords={"data": np.arange(n)}, attrs={"num_samples": 100})


def _images(n=12, d=16):
    observed = xr.Dataset({"x": (("data", "x_dim_0"), rng.integers(0, 2, (n, d)).astype(float))})
    predictive = az.dict_to_dataset({"reconstructions": rng.random((1, 1, n, d))},
                                    dims={"reconstructions": ["data", "x_dim_0"]})
    return {"observed_data": observed, "posterior_predictive": predictive}


def _filtering(T=30):
    return xr.Dataset({"filter_mean": (("time", "state_dim"), rng.normal(size=(T, 2))),
                       "filter_var": (("time", "state_dim"), np.ones((T, 2))),
                       "ess": ("time", rng.uniform(10, 100, T)),
                       "resampled": ("time", (np.arange(T) % 3 == 0).astype(np.int8))},
                      coords={"time": np.arange(T)}, attrs={"log_evidence": -41.234567})


def _dataset(**variables):
    return az.dict_to_dataset(variables)


# family: (groups -> InferenceData, headings that must appear)
FAMILIES = {
    "amortized": (
        lambda: az.InferenceData(amortization=_amortization(), **_images(),
                                 rate_distortion=xr.Dataset(
                                     {"rate": ("beta", [5.0, 3.0, 1.0]),
                                      "distortion": ("beta", [15.0, 17.0, 21.0])},
                                     coords={"beta": [0.1, 1.0, 10.0]})),
        ["Data and reconstructions", "Rate-distortion curve", "PSIS k̂ per data point",
         "PSIS k̂ good / ok / bad"],
    ),
    "wake_sleep": (
        lambda: az.InferenceData(model_samples=xr.Dataset(
            {"x": (("sample", "feature"), rng.random((10, 16)))})),
        ["Samples from the model"],
    ),
    "smc": (
        lambda: az.InferenceData(
            filtering=_filtering(),
            posterior=az.dict_to_dataset({"x": rng.normal(size=(2, 20, 30, 1))},
                                         dims={"x": ["time", "state_dim"]}),
            smoothing=xr.Dataset({"estimate": ("functional", [1.5, 2.5])}),
            training_history=xr.Dataset(
                {"step_objective": ("step", rng.normal(size=10)),
                 "mu": (("step", "mu_dim"), rng.normal(size=(10, 2)))},
                coords={"step": np.arange(1, 11)})),
        ["Particle filter", "Smoothed states", "Smoothed additive functional",
         "Learned parameters", "filter ESS"],
    ),
    "sgmcmc": (
        lambda: az.InferenceData(
            posterior=_dataset(w=rng.normal(size=(2, 50, 3))),
            sample_stats=_dataset(step_size=np.full((2, 50), 1e-3)),
            posterior_predictive=_dataset(obs=rng.normal(size=(2, 50, 20))),
            observed_data=xr.Dataset({"obs": ("obs_dim_0", rng.normal(size=20))})),
        ["Predictions", "Chains: traces and rank plots", "Step-size schedule"],
    ),
}
ALL_HEADINGS = [h for _, headings in FAMILIES.values() for h in headings]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_renders_its_sections_from_its_groups_only(family):
    build, headings = FAMILIES[family]
    page = render(build())
    for heading in headings:
        assert heading in page, heading
    others = [h for h in ALL_HEADINGS if h not in headings]
    assert not [h for h in others if h in page]


def test_family_sections_are_absent_without_their_groups():
    history = History()
    history.log_epoch({"epoch": 1, "train_loss": 3.0})
    page = render(history_inference_data(history))
    assert "Training history" in page
    assert not [h for h in ALL_HEADINGS if h in page]


def test_every_family_registers_beside_its_engine():
    modules = {s.name.rsplit(".", 1)[0] for s in sections()}
    for family in ("amortized", "wake_sleep", "smc", "sgmcmc"):
        assert f"posterity.infer.{family}.sections" in modules
    assert all(set(s.groups) <= set(GROUPS) for s in sections())
    assert [s.order for s in sections()] == sorted(s.order for s in sections())


def test_report_module_names_no_family_group():
    source = inspect.getsource(report_module)
    assert [g for g in FAMILY_GROUPS if g in source] == []


def test_a_section_must_declare_groups_from_the_vocabulary():
    with pytest.raises(ValueError, match="GROUPS.*'learning_history'"):
        register_section(lambda idata: "", groups=("learning_history",))


def test_numbers_are_rounded_to_their_standard_error():
    assert format_estimate(-16.94000816345215, 0.0312) == "-16.940 ± 0.031"
    assert format_estimate(-85.27, 2.31) == "-85.3 ± 2.3"
    assert format_estimate(-85.27, 0.0996) == "-85.27 ± 0.10"
    assert format_estimate(1234.5678, 23.0) == "1235 ± 23"
    assert format_estimate(0.123456789, None) == "0.1235"
    idata = az.from_dict(posterior={"mu": rng.normal(size=(1, 20))})
    idata.posterior.attrs.update(test_log_likelihood=-16.94000816345215,
                                 test_log_likelihood_se=0.0312, lr=0.00123456789)
    page = render(idata)
    assert "-16.940 ± 0.031" in page
    text = re.sub(r"base64,[^\"']+", "", page)
    assert "0.001235" in text and "0.00123456789" not in text
    significant = [len(n.replace(".", "").lstrip("-0")) for n in re.findall(r"-?\d+\.\d+", text)]
    assert max(significant) <= 5  # 4 digits, or what the standard error justifies


def test_key_figures_come_first_then_pictures_then_long_tables():
    idata = FAMILIES["amortized"][0]()
    idata.add_groups(posterior=az.dict_to_dataset({"z": rng.normal(size=(1, 10, 12, 2))},
                                                  dims={"z": ["data", "z_dim_0"]}))
    page = render(idata)
    positions = [page.index(h) for h in ("PSIS k̂ good / ok / bad", "Data and reconstructions",
                                         "Rate-distortion curve", "PSIS k̂ per data point",
                                         "Posterior summary")]
    assert positions == sorted(positions)
    assert "<details" in page[positions[-1]:]  # the long summary table is folded


def test_pages_are_self_contained(tmp_path):
    path = report(FAMILIES["smc"][0](), tmp_path / "r.html")
    text = path.read_text()
    sources = re.findall(r"""src=["']([^"']*)""", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in text and "<script" not in text and "http" not in text


def test_combined_report_indexes_the_tests(tmp_path):
    entries = [("k-hat of a wide proposal", FAMILIES["amortized"][0](), "note")]
    tests = [IndexEntry("tests/test_a.py::test_wide", "passed", 1.25,
                         ("k-hat of a wide proposal",)),
             IndexEntry("tests/test_a.py::test_narrow", "failed", 0.5)]
    text = combined_report(entries, tmp_path / "index.html", tests=tests).read_text()
    assert "Statistical tests: 1 of 2 passed, 1 failed" in text
    assert "href='#entry-0'" in text and "id='entry-0'" in text
    assert text.index("test_narrow") < text.index("PSIS k̂ per data point")


def test_image_grid_tiles_square_images():
    images = np.arange(3 * 4, dtype=float).reshape(3, 4)  # three 2 x 2 images
    grid = image_grid(images, columns=2, pad=-1)
    assert grid.shape == (5, 5)
    np.testing.assert_array_equal(grid[:2, 3:], [[4, 5], [6, 7]])
    assert (grid[2] == -1).all()
    with pytest.raises(ValueError, match="square number of features, got 5"):
        image_grid(np.zeros((2, 5)))


def test_amortized_groups_hold_the_rate_and_distortion_of_each_point_and_reconstructions():
    torch.manual_seed(0)
    model, guide = VAE(16, 2, (8,)), GaussianEncoder(16, 2, (8,))
    x = torch.bernoulli(torch.full((6, 16), 0.4))
    idata = amortized_inference_data(model, guide, x, num_samples=50, num_model_samples=5)
    # the rate in closed form; rate + distortion = -E_q[log w] within Monte Carlo error
    log_w = idata.sample_stats["log_importance_weight"].values.reshape(50, 6)
    group = idata.amortization
    with torch.no_grad():
        loc, scale = guide.posterior_params(x)
        kl = (0.5 * (loc**2 + scale**2 - 1) - scale.log()).sum(-1)
    np.testing.assert_allclose(group["rate"], kl.numpy(), rtol=1e-5)
    stderr = log_w.std(0) / np.sqrt(50)
    assert (np.abs(group["rate"] + group["distortion"] + log_w.mean(0)) < 4 * stderr).all()
    assert idata.posterior_predictive["reconstructions"].shape == (1, 1, 6, 16)
    assert idata.model_samples["x"].shape == (5, 16)
    # a reconstruction is the decoder mean at the guide's draw
    pyro.set_rng_seed(3)
    means = reconstructions(model, guide, x)
    pyro.set_rng_seed(3)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    torch.testing.assert_close(means, model.decode(z))


def test_to_inference_data_asks_the_kernel_of_an_mcmc_run():
    from pyro.infer import MCMC, NUTS

    class Recording(NUTS):
        def to_inference_data(self, mcmc, *args, **kwargs):
            return az.InferenceData(posterior=_dataset(seen=np.ones((1, 2))))

    def model():
        pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))

    for kernel, group in ((Recording(model), "seen"), (NUTS(model), "mu")):
        mcmc = MCMC(kernel, num_samples=5, warmup_steps=5, disable_progbar=True)
        mcmc.run()
        assert group in to_inference_data(mcmc).posterior


def test_an_engine_given_instead_of_its_inference_data_is_named(tmp_path):
    from posterity.guides import GaussianEncoder
    from posterity.infer import AmortizedVI
    from posterity.infer.report import report
    from posterity.models import VAE

    engine = AmortizedVI(VAE(6, 2, (4,)), GaussianEncoder(6, 2, (4,)))
    with pytest.raises(TypeError, match=r"got AmortizedVI \(an engine: pass "
                                        r"engine.to_inference_data\(...\)\)"):
        report(engine, tmp_path / "report.html")


def test_tied_weights_of_a_discrete_guide_are_not_counted_as_bad_fits(tmp_path):
    """A belief net with 4 binary latents has 16 configurations; a guide close to the
    posterior (as training makes it) draws a few of them over and over and their weights
    tie at the top, so PSIS has no tail to fit. Here the guide is the exact posterior:
    every weight is p(x). k̂ is then undefined (NaN; ArviZ says inf), not 'bad', and the
    page says how those points are judged."""
    from programs import UserBeliefNet, UserRecognitionNet

    from posterity.infer import WakeSleep

    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((30, 12), 0.3))
    model, guide = UserBeliefNet(), UserRecognitionNet()
    logits = torch.tensor([4.0, -4.0, 4.0, -4.0])
    with torch.no_grad():  # x independent of h, so the posterior is the prior
        model.prior_logits.copy_(logits)
        model.decoder.weight.zero_()
        guide.encoder.weight.zero_()
        guide.encoder.bias.copy_(logits)
    engine = WakeSleep(model, guide, algorithm="rws")
    idata = engine.to_inference_data(x, num_samples=200, num_model_samples=4)
    khat = idata.amortization["pareto_k"].values
    assert np.isnan(khat).any() and not np.isinf(khat).any()
    page = report(idata, tmp_path / "r.html").read_text()
    assert "PSIS k̂ good / ok / bad / tied" in page
    assert f"{int(np.isnan(khat).sum())} data points have no k̂" in page


def test_model_samples_say_whether_they_are_means_or_draws():
    from programs import UserBeliefNet, UserRecognitionNet

    x = torch.bernoulli(torch.full((4, 16), 0.4))
    own = amortized_inference_data(UserBeliefNet(16), UserRecognitionNet(16), x,
                                   num_samples=10, num_model_samples=3)
    built_in = amortized_inference_data(VAE(16, 2, (8,)), GaussianEncoder(16, 2, (8,)), x,
                                        num_samples=10, num_model_samples=3)
    assert set(np.unique(own.model_samples["x"].values)) <= {0.0, 1.0}
    assert "the observed site of each draw" in render(own)
    assert "the mean of p(x | z) at each draw of z" in render(built_in)


def test_discrete_outcomes_get_class_frequencies_and_a_randomized_pit():
    """For 0/1 outcomes a 90% interval covers everything and the plain PIT is not uniform
    even for a calibrated model; the randomized PIT is (Czado et al. 2009): with
    observations and predictive draws from the same Bernoulli(p_i), its mean is 1/2 and
    its variance 1/12, each within 4 standard errors over 3000 points."""
    from posterity.infer.sgmcmc.sections import randomized_pit

    rng = np.random.default_rng(1)  # not the PIT's own seed 0, whose uniforms it would reuse
    p = rng.uniform(0.05, 0.95, 3000)
    y = rng.binomial(1, p).astype(float)
    draws = rng.binomial(1, p, (400, 3000)).astype(float)
    pit = randomized_pit(y, draws)
    assert abs(pit.mean() - 0.5) < 4 * np.sqrt(1 / 12 / 3000)
    assert abs(pit.var() - 1 / 12) < 4 * np.sqrt(1 / 180 / 3000)  # var of (U - 1/2)^2
    idata = az.from_dict(posterior={"w": rng.normal(size=(2, 50))},
                         posterior_predictive={"y": draws[:100].reshape(2, 50, 3000)[..., :60]},
                         observed_data={"y": y[:60]})
    page = render(idata)
    assert "60 points with 2 distinct outcomes" in page
    assert "inside their 90% predictive interval" not in page


def test_a_log_likelihood_group_gives_the_log_predictive_density_per_point():
    ll = np.log(np.array([[[0.2, 0.5], [0.4, 0.5]]]))  # [chain, draw, point]
    idata = az.from_dict(posterior={"w": np.zeros((1, 2))}, log_likelihood={"y": ll})
    expected = np.log([0.3, 0.5])  # log of the mean density over the draws, per point
    value = format_estimate(expected.mean(), expected.std(ddof=1) / np.sqrt(2))
    page = render(idata)
    assert "log predictive density of y" in page and value in page


def test_data_that_are_not_square_images_still_show_their_reconstructions():
    x = torch.bernoulli(torch.full((5, 12), 0.4))
    idata = amortized_inference_data(VAE(12, 2, (8,)), GaussianEncoder(12, 2, (8,)), x,
                                     num_samples=10)
    page = render(idata)
    assert "Data and reconstructions" in page and "first 5 diagnostic points (rows)" in page
