"""Every docstring example in the package runs and prints what it claims.

The modules are found by walking the packages, so a new module is covered without
being listed here. A module whose import needs an optional package that is not
installed is skipped, naming the package.
"""

import doctest
import importlib
import io
import pkgutil

import pyro
import pytest

PACKAGES = ["posterity.infer", "posterity.models", "posterity.guides", "posterity.layers",
            "posterity.datasets"]


def module_names() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + ".",
                                          onerror=lambda name: None):
            names.append(info.name)
    return sorted(set(names))


def import_or_skip(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing and missing != "posterity":
            pytest.skip(f"{name} needs the optional package {missing!r}, not installed")
        raise


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples(name):
    module = import_or_skip(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    pyro.set_rng_seed(0)  # each module's examples see the same generators, in any order
    for test in finder.find(module, name):  # the module's own objects, not its imports
        runner.run(test, out=report.write)
    assert runner.failures == 0, f"{runner.failures} failed example(s) in {name}:\n" + \
        report.getvalue()


def test_the_walk_finds_the_modules_of_every_package():
    names = module_names()
    for expected in ["posterity.infer.train", "posterity.infer.amortized.vi",
                     "posterity.infer.smc.filter", "posterity.models.vae",
                     "posterity.guides.encoders", "posterity.layers", "posterity.datasets"]:
        assert expected in names
