"""The shared training loop: exact resume, early stopping, NaN guard, progress, history;
and the shared optimizer set-up."""

import math

import pyro
import pytest
import torch
from programs import UserGuide, UserModel, two_direction_data

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, NonFiniteError
from posterity.models import VAE


def make_vi(seed: int = 0) -> AmortizedVI:
    torch.manual_seed(seed)
    return AmortizedVI(VAE(16, 3, (8,)), GaussianEncoder(16, 3, (8,)), objective="iwae",
                       num_particles=3, lr=1e-2)


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((120, 16), 0.3), generator=generator)


def parameters(vi: AmortizedVI) -> list[torch.Tensor]:
    return [p.detach().clone() for p in vi.parameters()]


def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path):
    straight = make_vi()
    straight.fit(data, epochs=4, batch_size=25, valid=data[:40], seed=3, progress=False)

    first = make_vi()
    checkpoint = tmp_path / "run.pt"
    first.fit(data, epochs=2, batch_size=25, valid=data[:40], seed=3, progress=False,
              checkpoint=checkpoint)
    pyro.set_rng_seed(999)  # whatever happens between the runs must not matter
    resumed = make_vi(seed=42)  # a fresh process would build different initial weights
    resumed.fit(data, epochs=4, batch_size=25, valid=data[:40], seed=3, progress=False,
                checkpoint=checkpoint)

    for a, b in zip(parameters(straight), parameters(resumed)):
        assert torch.equal(a, b)
    assert straight.history.steps["loss"] == resumed.history.steps["loss"]
    assert resumed.history.epochs["epoch"] == [1, 2, 3, 4]


def test_a_finished_checkpoint_resumes_to_nothing_more(data, tmp_path):
    vi = make_vi()
    vi.fit(data, epochs=2, batch_size=40, progress=False, checkpoint=tmp_path / "c.pt")
    again = make_vi(seed=5)
    again.fit(data, epochs=2, batch_size=40, progress=False, checkpoint=tmp_path / "c.pt")
    for a, b in zip(parameters(vi), parameters(again)):
        assert torch.equal(a, b)


def test_early_stopping_restores_the_best_parameters(data):
    vi = make_vi()
    scores = iter([1.0, 3.0, 2.0, 2.5, 0.0, 5.0])
    best = {}

    def fake_validate(valid):
        score = next(scores)
        if score == 3.0:
            best["params"] = parameters(vi)
        return {"valid_iwae": score}

    vi.validate = fake_validate
    history = vi.fit(data, epochs=10, batch_size=40, valid=data, patience=2, progress=False)
    assert history.stopped_early and history.best_epoch == 2
    assert history.num_epochs == 4
    for a, b in zip(best["params"], parameters(vi)):
        assert torch.equal(a, b)


def test_nan_stops_with_the_step_and_the_quantity(data):
    vi = make_vi()
    with torch.no_grad():
        vi.model.decoder[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="loss became nan at epoch 1, step 1"):
        vi.fit(data, epochs=1, batch_size=40, progress=False)


def test_a_distribution_given_inf_by_a_diverging_update_stops_with_the_step():
    """PyTorch's argument validation reports a scale exp(s) that underflowed to 0 as a
    ValueError; after a first update that succeeded, the loop names it a divergence."""
    pyro.set_rng_seed(0)
    vi = AmortizedVI(UserModel(), UserGuide(), objective="multi_rate", lr=1e3)
    with pytest.raises(NonFiniteError, match=r"^the scale of a Normal left GreaterThan\("
                                             r"lower_bound=0.0\) at epoch 1, step 2 \(global "
                                             r"update count\): NaN, Inf, an overflow") as stop:
        vi.fit(two_direction_data(torch.float32), epochs=2, batch_size=100, progress=False,
               seed=0)
    assert isinstance(stop.value.__cause__, ValueError)


def test_only_invalid_values_after_a_first_good_update_are_a_divergence():
    from posterity.infer.train import _diverged

    invalid = ValueError("Expected parameter loc (Tensor of shape (2,)) of distribution "
                         "Normal(loc: torch.Size([2])) to satisfy the constraint Real(), but "
                         "found invalid values:\ntensor([nan, 1.])")
    assert _diverged(invalid, epoch=0, step=1) is None  # the model's bug, not a divergence
    assert str(_diverged(invalid, epoch=2, step=7)).startswith(
        "the loc of a Normal left Real() at epoch 3, step 7")
    assert _diverged(ValueError("data must be binary"), epoch=0, step=7) is None
    observed = ValueError("Expected value argument (Tensor of shape (2,)) to be within the "
                          "support (Boolean()) of the distribution Bernoulli(logits: "
                          "torch.Size([2])), but found invalid values:\ntensor([0.5, 1.])")
    assert _diverged(observed, epoch=0, step=7) is None  # the data's, not a divergence


def test_patience_without_validation_data_is_refused(data):
    with pytest.raises(ValueError, match="pass valid= data too"):
        make_vi().fit(data, epochs=2, batch_size=40, patience=2, progress=False)


def test_history_logs_every_quantity(data):
    vi = make_vi()
    history = vi.fit(data, epochs=3, batch_size=50, valid=data[:30], progress=False)
    assert len(history.steps["loss"]) == 3 * 3
    assert set(history.epochs) >= {"epoch", "seconds", "train_loss", "valid_iwae"}
    assert len(history["valid_iwae"]) == 3
    vi.fit(data, epochs=5, batch_size=50, valid=data[:30], progress=False)  # continues
    assert history.epochs["epoch"] == [1, 2, 3, 4, 5]


def test_progress_bar_shows_the_objective(data, capsys):
    make_vi().fit(data, epochs=1, batch_size=60, valid=data[:30], progress=True)
    err = capsys.readouterr().err
    assert "AmortizedVI" in err and "valid_iwae=" in err


def test_same_seed_same_result(data):
    a, b = make_vi(), make_vi()
    a.fit(data, epochs=2, batch_size=30, seed=8, progress=False)
    b.fit(data, epochs=2, batch_size=30, seed=8, progress=False)
    for x, y in zip(parameters(a), parameters(b)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 2, "batch_size": 0}, "batch_size must be >= 1"),
    ({"epochs": -1, "batch_size": 10}, "epochs must be >= 0"),
    ({"epochs": 2, "batch_size": 10, "patience": 0}, "patience must be >= 1"),
    ({"epochs": 2, "batch_size": 10, "time_budget": -1}, "time_budget must be > 0, got -1"),
])
def test_bad_loop_arguments(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_vi().fit(data, progress=False, **kwargs)


def test_time_budget_stops_mid_epoch_and_logs_the_partial_epoch(data):
    import time

    class Slow:
        """A stand-in engine whose every update takes 20 ms."""

        monitor = ("valid_metric", "max")

        def __init__(self):
            self.updates = 0

        def step(self, batch):
            time.sleep(0.02)
            self.updates += 1
            return {"loss": 1.0}

        def validate(self, data):
            return {"valid_metric": 0.0}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    from posterity.infer import fit

    engine = Slow()
    history = fit(engine, torch.zeros(1000, 2), epochs=5, batch_size=10, valid=torch.zeros(2, 2),
                  time_budget=0.3, progress=False)
    assert history.out_of_time and history.num_epochs == 1
    assert 0.3 <= history.epochs["seconds"][0] < 1.0
    assert engine.updates < 100 and history.epochs["valid_metric"] == [0.0]


# --- the shared optimizer set-up ----------------------------------------------------------
def test_make_optimizer_keeps_each_groups_own_learning_rate():
    from posterity.infer.train import make_optimizer

    w, gate = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    opt, scheduler = make_optimizer([{"params": [w]}, {"params": [gate], "lr": 0.1}], "adam",
                                    lr=0.01, betas=(0.5, 0.9))
    assert isinstance(opt, torch.optim.Adam) and scheduler is None
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]
    assert opt.param_groups[1]["betas"] == (0.5, 0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_named_adam_takes_the_fused_kernel_and_the_same_steps(dtype):
    from posterity.infer.train import make_optimizer, optimizer_step

    target = torch.linspace(-1, 1, 7, dtype=dtype)
    kernels = {"fused": {}, "default": {"fused": False}, "foreach": {"foreach": True}}
    runs = {}
    for name, kwargs in kernels.items():
        w = torch.nn.Parameter(torch.zeros(7, dtype=dtype))
        opt, _ = make_optimizer([w], "adam", lr=0.1, **kwargs)
        assert bool(opt.param_groups[0]["fused"]) == (name == "fused")
        for _ in range(5):
            optimizer_step(opt, ((w - target) ** 4).sum())
        runs[name] = w.detach()
    torch.testing.assert_close(runs["fused"], runs["default"])
    torch.testing.assert_close(runs["fused"], runs["foreach"])


def test_adam_keeps_the_default_kernel_where_fused_cannot_run():
    from posterity.infer.train import make_optimizer

    lazy = torch.nn.LazyLinear(2)
    opt, _ = make_optimizer(lazy.parameters(), "adam")
    assert not opt.param_groups[0]["fused"]


def cosine_vi() -> tuple[AmortizedVI, list[float]]:
    """A VI engine whose cosine length comes from ``fit``, and the learning rate of
    every update it takes."""
    torch.manual_seed(0)
    vi = AmortizedVI(VAE(16, 3, (8,)), GaussianEncoder(16, 3, (8,)), lr=1e-2,
                     scheduler="cosine")
    rates: list[float] = []
    vi.optimizer.register_step_pre_hook(
        lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    return vi, rates


def test_a_resumed_run_with_more_epochs_stretches_the_rest_of_the_cosine(data, tmp_path):
    first, _ = cosine_vi()
    first.fit(data, epochs=2, batch_size=40, seed=0, time_budget=1e-9,
              checkpoint=tmp_path / "run")  # stops after the first update of 6
    resumed, rates = cosine_vi()
    with pytest.warns(UserWarning, match="resuming"):  # the loop notes the new epochs
        resumed.fit(data, epochs=4, batch_size=40, seed=0, checkpoint=tmp_path / "run")
    # the rest of the budget's partial epoch (2 updates), then epochs 2-4 (9 updates)
    assert len(rates) == 11 and resumed.scheduler.T_max == 12
    assert all(b < a for a, b in zip(rates, rates[1:]))  # decays, never climbs again
    assert rates[-1] < 0.15 * rates[0]


def test_a_second_fit_after_the_cosine_ended_warns_that_it_would_rise_again(data):
    vi, _ = cosine_vi()
    vi.fit(data, epochs=1, batch_size=40, seed=0)
    with pytest.warns(UserWarning, match="rises again"):
        vi.fit(data, epochs=2, batch_size=40, seed=0)


def test_cosine_decays_every_group_to_zero_over_total_steps():
    from posterity.infer.train import make_optimizer, optimizer_step

    w, gate = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    opt, scheduler = make_optimizer([{"params": [w]}, {"params": [gate], "lr": 0.1}], "sgd",
                                    lr=1.0, scheduler="cosine", total_steps=4)
    rates = []
    for _ in range(4):
        optimizer_step(opt, (w.sum() + gate.sum()) * 0.0, scheduler)
        rates.append([g["lr"] for g in opt.param_groups])
    half = [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(1, 5)]
    expected = [rate for h in half for rate in (h, 0.1 * h)]
    assert [r for pair in rates for r in pair] == pytest.approx(expected, abs=1e-12)


def test_optimizer_factories_and_classes_are_accepted():
    from posterity.infer.train import make_optimizer

    w = torch.nn.Parameter(torch.ones(2))
    opt, _ = make_optimizer([w], torch.optim.SGD, lr=0.3, momentum=0.9)
    assert opt.param_groups[0]["momentum"] == 0.9
    opt, _ = make_optimizer([w], lambda params, lr: torch.optim.RMSprop(params, lr=lr), lr=0.2)
    assert isinstance(opt, torch.optim.RMSprop) and opt.param_groups[0]["lr"] == 0.2
    opt, _ = make_optimizer([w], lambda params: torch.optim.SGD(params, lr=0.05))
    assert opt.param_groups[0]["lr"] == 0.05
    opt, scheduler = make_optimizer(
        [w], lr=0.1, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"optimizer": "lbfgs"}, ValueError, "optimizer must be one of"),
    ({"optimizer": 3}, TypeError, "optimizer must be 'adam', 'adamw', 'sgd'"),
    ({"lr": 0.0}, ValueError, "lr must be > 0, got 0.0"),
    ({"scheduler": "cosine"}, ValueError, "scheduler='cosine' needs total_steps"),
    ({"scheduler": "linear", "total_steps": 5}, ValueError, "scheduler must be one of"),
    ({"optimizer": lambda p: None}, TypeError, "must return a torch.optim.Optimizer"),
])
def test_bad_optimizer_settings_are_named(kwargs, error, message):
    from posterity.infer.train import make_optimizer

    with pytest.raises(error, match=message):
        make_optimizer([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_make_optimizer_refuses_no_parameters_and_a_bare_tensor():
    from posterity.infer.train import make_optimizer

    with pytest.raises(ValueError, match="params_or_groups is empty"):
        make_optimizer([])
    with pytest.raises(TypeError, match="got a single Tensor"):
        make_optimizer(torch.nn.Parameter(torch.ones(1)))


def test_optimizer_step_clips_then_calls_the_hook_then_steps():
    from posterity.infer.train import make_optimizer, optimizer_step

    w = torch.nn.Parameter(torch.zeros(2))
    opt, _ = make_optimizer([w], "sgd", lr=1.0)
    seen = []
    optimizer_step(opt, (w * torch.tensor([30.0, 40.0])).sum(), clip_grad_norm=5.0,
                   before_step=lambda: seen.append(w.grad.clone()))
    assert torch.allclose(seen[0], torch.tensor([3.0, 4.0]))  # clipped to norm 5 first
    assert torch.allclose(w.detach(), torch.tensor([-3.0, -4.0]))
    with pytest.raises(ValueError, match="loss must be a scalar tensor, got shape"):
        optimizer_step(opt, w * 2)


def test_a_second_fit_to_the_same_total_says_there_is_nothing_to_train():
    from posterity.guides import GaussianEncoder
    from posterity.infer import AmortizedVI
    from posterity.models import VAE

    x = torch.bernoulli(torch.full((40, 10), 0.4))
    vi = AmortizedVI(VAE(10, 2, (8,)), GaussianEncoder(10, 2, (8,)))
    vi.fit(x, epochs=1, batch_size=20, progress=False)
    with pytest.warns(UserWarning, match=r"fit\(epochs=1\): 1 epochs are done already"):
        vi.fit(x, epochs=1, batch_size=20, progress=False)
    assert vi.history.num_epochs == 1
    vi.fit(x, epochs=2, batch_size=20, progress=False)
    assert vi.history.num_epochs == 2
