# Two commands do all set-up on a fresh machine (see README.md):
#   make demo   installs the package and predicts a generated sample clip with the embedded engine
#   make test   installs the test extras and runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= out/demo

.PHONY: demo test test-long lint docs bench report venv install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The stamp files re-run pip only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/avsal predict --sample --overlay --png --out $(OUT)

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# The long tests (thousands of fuzzed requests to a live server): minutes, not part of `make test`.
test-long: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m long

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The documentation site, built as CI builds it (every warning an error); open out/site/index.html.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir out/site

bench: $(VENV)/.installed-dev
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only -q

# The benchmark report (report.json, report.md, plots); QUICK= for the full one with the paper profile.
QUICK ?= --quick
report: $(VENV)/.installed-dev
	$(VENV)/bin/avsal bench --out out/bench $(QUICK)

clean:
	rm -rf $(VENV) out .pytest_cache .benchmarks
