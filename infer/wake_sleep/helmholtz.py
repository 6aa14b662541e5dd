"""A Helmholtz machine: a sigmoid belief net and its recognition net, built as a pair.

It lives here rather than in ``posterity.models`` because it builds a model and a guide,
and the two root packages never import each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from posterity.guides import SigmoidRecognitionNet
from posterity.models import SigmoidBeliefNet


def helmholtz_machine(
    layers: Sequence[int] = (784, 200, 200, 10),
) -> tuple[SigmoidBeliefNet, SigmoidRecognitionNet]:
    """A generative sigmoid belief net and its recognition net of the same widths
    (Dayan, Hinton, Neal & Zemel 1995).

    Example:
        >>> model, guide = helmholtz_machine((6, 4, 2))
        >>> model.layers
        (6, 4, 2)
    """
    return SigmoidBeliefNet(layers), SigmoidRecognitionNet(layers)
