"""posterity.infer: the engines, the shared training loop, evaluation, diagnostics and
the command line.

Families live in sub-packages that look alike from outside: :mod:`.amortized`,
:mod:`.wake_sleep`, :mod:`.smc` and :mod:`.sgmcmc`. The shared plumbing sits here:
:mod:`.train` (the one gradient loop), :mod:`.checks`, :mod:`.inference_data`,
:mod:`.report` and :mod:`.cli`.
"""

from . import sgmcmc, smc  # noqa: F401  (every family registers its report sections)
from .amortized import (
    AmortizedVI,
    RateDistortion,
    log_likelihood,
    rate_distortion,
    reference_points,
)
from .importance import WeightedParticles, weighted_particles
from .inference_data import to_inference_data
from .report import report
from .train import History, NonFiniteError, fit
from .wake_sleep import WakeSleep, helmholtz_machine

__all__ = [
    "AmortizedVI",
    "History",
    "NonFiniteError",
    "RateDistortion",
    "WakeSleep",
    "WeightedParticles",
    "fit",
    "helmholtz_machine",
    "log_likelihood",
    "rate_distortion",
    "reference_points",
    "report",
    "to_inference_data",
    "weighted_particles",
]

# Module paths of release 0.1, before the family sub-packages, stay importable.
import sys as _sys  # noqa: E402

from . import checks as _checks  # noqa: E402
from .amortized import evaluate as _evaluate  # noqa: E402
from .amortized import vi as _vi  # noqa: E402
from .wake_sleep import natural as _natural  # noqa: E402

for _old, _module in {"validation": _checks, "evaluate": _evaluate, "vi": _vi,
                      "natural": _natural}.items():
    _sys.modules.setdefault(f"{__name__}.{_old}", _module)
