"""Shared fixtures: seeding, CUDA skipping and the diagnostics report.

``pytest --diagnostics-report DIR`` collects the ArviZ diagnostics that statistical
tests hand to the ``diagnostics_report`` fixture into ``DIR/index.html``.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# One intra-op thread: the tests are small, and on a shared 2-core machine more threads
# only oversubscribe it (a 4 s test took 69 s under load with the default pool).
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--diagnostics-report",
        metavar="DIR",
        default=None,
        help="write the ArviZ diagnostics of the statistical tests to DIR/index.html",
    )


class DiagnosticsReport:
    """Collects ``(heading, idata, note)`` entries during the session, and the outcome of
    every statistical test (a test that uses this fixture or is marked ``slow``)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, object, str]] = []
        self.current: str | None = None
        self.headings: dict[str, list[str]] = {}
        self.outcomes: dict[str, tuple[str, float]] = {}

    def add(self, heading: str, idata, note: str = "") -> None:
        self.entries.append((heading, idata, note))
        if self.current is not None:
            self.headings.setdefault(self.current, []).append(heading)


_REPORT = DiagnosticsReport()


@pytest.fixture(scope="session")
def diagnostics_report() -> DiagnosticsReport:
    return _REPORT


def _is_statistical(item: pytest.Item) -> bool:
    return "diagnostics_report" in getattr(item, "fixturenames", ()) or bool(
        item.get_closest_marker("slow"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    if not _is_statistical(item):
        return
    result = outcome.get_result()
    name = item.nodeid
    if result.when == "setup":
        _REPORT.current = name
    if result.when != "call" and result.passed:
        return
    state, seconds = _REPORT.outcomes.get(name, ("passed", 0.0))
    if state != "failed" and not result.passed:
        state = result.outcome  # a failure anywhere wins over a skip, a skip over a pass
    _REPORT.outcomes[name] = (state, seconds + result.duration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = session.config.getoption("--diagnostics-report")
    if directory and (_REPORT.entries or _REPORT.outcomes):
        from posterity.infer.report import IndexEntry, combined_report

        tests = [IndexEntry(name, outcome, seconds, tuple(_REPORT.headings.get(name, ())))
                 for name, (outcome, seconds) in _REPORT.outcomes.items()]
        path = combined_report(_REPORT.entries, Path(directory) / "index.html", tests=tests)
        print(f"\ndiagnostics report: {path}")


@pytest.fixture(autouse=True)
def _seed_and_validate():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def mnist():
    if not (SHARED_DATA / "binarized_mnist.npz").exists():
        pytest.skip("../shared/data/binarized_mnist.npz is not present")
    from posterity.datasets import binarized_mnist

    return binarized_mnist(SHARED_DATA)
