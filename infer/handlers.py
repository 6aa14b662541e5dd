"""When posterity may bypass Pyro's tracing with a model's own density code."""

from __future__ import annotations

from pyro.poutine.block_messenger import BlockMessenger
from pyro.poutine.runtime import _PYRO_STACK


def densities_unaltered() -> bool:
    """True when no active Pyro handler could change a program's log density.

    ``poutine.block`` (which ``pyro.infer.MCMC.run`` wraps around everything) only
    hides sites from outer handlers, so it is allowed; any other handler (condition,
    scale, mask, replay, trace, ...) sends the engines down the traced path.
    """
    return all(isinstance(handler, BlockMessenger) for handler in _PYRO_STACK)
