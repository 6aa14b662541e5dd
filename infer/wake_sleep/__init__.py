"""posterity.infer.wake_sleep: wake-sleep, reweighted wake-sleep, natural RWS and
(natural) bidirectional Helmholtz machines for sigmoid belief nets and other programs
with Bernoulli latents."""

from . import sections  # noqa: F401  (registers the report sections)
from .engine import ALGORITHMS, DEFAULTS, WakeSleep, guide_log_density, sleep_samples
from .helmholtz import helmholtz_machine
from .natural import (
    BernoulliNaturalGradient,
    LayerRecorder,
    bernoulli_fisher_blocks,
    factorize,
    spd_inverse,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULTS",
    "BernoulliNaturalGradient",
    "LayerRecorder",
    "WakeSleep",
    "bernoulli_fisher_blocks",
    "factorize",
    "guide_log_density",
    "helmholtz_machine",
    "sleep_samples",
    "spd_inverse",
]
