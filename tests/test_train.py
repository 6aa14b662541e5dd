"""The shared training loop: exact resume, early stopping, NaN guard, progress, history."""

import pyro
import pytest
import torch

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
    with pytest.raises(NonFiniteError, match="loss became nan at epoch 0, step 1"):
        vi.fit(data, epochs=1, batch_size=40, progress=False)


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
