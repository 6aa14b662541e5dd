"""The examples in the public docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = [
    "posterity.infer.wake_sleep.helmholtz",
    "posterity.infer.amortized.vi",
    "posterity.infer.amortized.evaluate",
    "posterity.models.vae",
    "posterity.guides.encoders",
    "posterity.infer.sgmcmc.kernels",
    "posterity.infer.sgmcmc.structured",
    "posterity.infer.smc.filter",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
