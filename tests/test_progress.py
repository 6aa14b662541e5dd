"""Progress bars follow tqdm's convention: shown on an interactive terminal, hidden in
logs and pipes, switched off everywhere by POSTERITY_PROGRESS=0 or set_progress(False),
and overridden by an engine's progress= argument."""

import io

import pytest
import torch

from posterity.infer import fit
from posterity.infer.progress import progress_bar, progress_enabled, set_progress


class Terminal(io.StringIO):
    """A stderr that says it is an interactive terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def default_switches(monkeypatch):
    monkeypatch.delenv("POSTERITY_PROGRESS", raising=False)
    set_progress(None)
    yield
    set_progress(None)


def test_shown_on_a_terminal_hidden_when_stderr_is_not_one(monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    assert progress_enabled()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress_enabled()


@pytest.mark.parametrize("value, shown", [("0", False), ("false", False), ("off", False),
                                          ("1", True)])
def test_the_environment_variable_switches_every_bar(monkeypatch, value, shown):
    monkeypatch.setattr("sys.stderr", Terminal() if not shown else io.StringIO())
    monkeypatch.setenv("POSTERITY_PROGRESS", value)
    assert progress_enabled() is shown


def test_set_progress_beats_the_environment_and_the_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setenv("POSTERITY_PROGRESS", "1")
    set_progress(False)
    assert not progress_enabled()
    set_progress(True)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_enabled()


def test_an_engines_progress_argument_overrides_every_switch(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setenv("POSTERITY_PROGRESS", "0")
    set_progress(False)
    assert progress_enabled(True) and not progress_enabled(False)
    with progress_bar(total=2, progress=True, file=io.StringIO()) as bar:
        assert not bar.disable
    with progress_bar(total=2, file=io.StringIO()) as bar:
        assert bar.disable


def test_set_progress_takes_only_true_false_or_none():
    with pytest.raises(TypeError, match="enabled must be True, False or None, got 'no'"):
        set_progress("no")


class Counting:
    monitor = ("valid", "max")

    def step(self, batch):
        return {"loss": 1.0}

    def validate(self, data):
        return {"valid": 0.0}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_training_loop_writes_no_bar_into_a_log_unless_asked(capsys):
    data = torch.zeros(20, 1)
    fit(Counting(), data, epochs=2, batch_size=5)  # pytest's captured stderr is no terminal
    assert capsys.readouterr().err == ""
    fit(Counting(), data, epochs=2, batch_size=5, progress=True)
    assert "Counting" in capsys.readouterr().err


def test_only_rank_0_of_a_process_group_shows_bars(monkeypatch):
    from posterity.infer import distributed
    from posterity.infer.progress import progress_enabled, set_progress

    set_progress(True)
    try:
        assert progress_enabled()
        monkeypatch.setattr(distributed, "is_main", lambda: False)
        assert not progress_enabled()  # rank 1 stays quiet
        assert not progress_enabled(True)  # even when an engine asks for a bar
    finally:
        set_progress(None)
