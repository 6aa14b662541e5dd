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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--diagnostics-report",
        metavar="DIR",
        default=None,
        help="write the ArviZ diagnostics of the statistical tests to DIR/index.html",
    )


class DiagnosticsReport:
    """Collects ``(heading, idata, note)`` entries during the session."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, object, str]] = []

    def add(self, heading: str, idata, note: str = "") -> None:
        self.entries.append((heading, idata, note))


_REPORT = DiagnosticsReport()


@pytest.fixture(scope="session")
def diagnostics_report() -> DiagnosticsReport:
    return _REPORT


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = session.config.getoption("--diagnostics-report")
    if directory and _REPORT.entries:
        from posterity.infer.report import combined_report

        path = combined_report(_REPORT.entries, Path(directory) / "index.html")
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
