# `make demo`: set up, check the bundled examples, write reports/. `make test`: set up, run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
JOBS ?= 2

.PHONY: demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[html]'
	touch $@

# The unsafe examples fail on purpose: exit status 1 (findings) is the expected outcome, anything else is not.
demo: $(VENV)/.installed
	$(PY) -m pytest examples -p xdist -n $(JOBS) --forkcheck-report reports -q; status=$$?; \
	  echo "report: reports/index.html and reports/forkcheck.json"; test $$status -le 1

test: $(VENV)/.installed
	$(PY) -m pytest -p xdist -n $(JOBS) tests

# The fast tier: everything but the quality tests marked slow (seeded bugs, fuzzing, xdist, whole sessions).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -p xdist -n $(JOBS) -m "not slow" tests

bench: $(VENV)/.installed
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) reports/index.html reports/forkcheck.json .pytest_cache .hypothesis
