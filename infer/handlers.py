"""Pyro handlers of posterity: when it may bypass Pyro's tracing with a model's own density
code, and the detaching of latent draws for wake-sleep."""

from __future__ import annotations

from pyro.poutine.block_messenger import BlockMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import Tensor


def densities_unaltered() -> bool:
    """True when no active Pyro handler could change a program's log density.

    ``poutine.block`` (which ``pyro.infer.MCMC.run`` wraps around everything) only
    hides sites from outer handlers, so it is allowed; any other handler (condition,
    scale, mask, replay, trace, ...) sends the engines down the traced path.
    """
    return all(isinstance(handler, BlockMessenger) for handler in _PYRO_STACK)


class DetachLatents(Messenger):
    """Detach the value of every latent sample site from the graph of the program's
    parameters, so that a reparameterized draw counts as a sample: its log density
    then has the score-function gradient, as wake-sleep's updates need.

    Postprocessing runs from the outermost handler inwards, so a ``poutine.trace``
    entered inside this handler records the detached value.
    """

    def _pyro_post_sample(self, msg) -> None:
        if not msg["is_observed"] and isinstance(msg["value"], Tensor):
            msg["value"] = msg["value"].detach()
