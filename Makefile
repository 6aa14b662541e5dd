# The two quick-start commands: `make demo` and `make test`. Each creates or reuses
# .venv and installs the package (editable) with the pinned versions into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DOCS_STAMP := $(VENV)/.docs-stamp
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench lint docs clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The suite also checks that the documentation site builds, so `make test` installs the
# docs extra (Sphinx, furo, myst-nb) too.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

demo: install
	$(BIN)/posterity demo

test: install $(DOCS_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/vi.py
	$(BIN)/python bench/mrvae.py
	$(BIN)/python bench/sgmcmc.py
	$(BIN)/python bench/smc.py
	$(BIN)/python bench/wake_sleep.py
	$(BIN)/python bench/distributed.py

lint: install
	$(BIN)/ruff check .

# `make docs`: the documentation site (Sphinx, furo, myst-nb) into docs/_build/html;
# warnings are errors. Notebooks render from their stored outputs.
docs: $(DOCS_STAMP)
	$(BIN)/python -m sphinx -b html -W --keep-going docs docs/_build/html

clean:
	rm -rf $(VENV) demo_out bench_out build *.egg-info
