# Two commands for a fresh clone (Python 3.11, no GPU needed):
#   make report   set up, run every notebook on the ci profile, build runs/index.html
#   make test     set up, run the test suite (unit tests + every notebook under papermill)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
JOBS ?= 2

.PHONY: setup data report test lint clean

setup: $(VENV)/.installed data

# CPU torch first, pinned, so no dependency range can pull another (CUDA) build; then the package.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	touch $@

# Fashion-MNIST (30 MB) for the real-data sections: Debian's package when apt is usable, else the
# checksummed download. Optional: notebooks say so and skip those sections when it is missing.
data:
	@$(PY) -c "import companion.data as d, sys; sys.exit(0 if d.available('fashion_mnist') else 1)" || \
	( { [ "$$(id -u)" = 0 ] && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || \
	  $(PY) data_scripts/fashion_mnist.py || \
	  echo "note: Fashion-MNIST not installed; its notebook sections will be skipped" )

report: setup
	$(VENV)/bin/companion run-all --profile ci --jobs $(JOBS)
	$(VENV)/bin/companion report

test: setup
	$(PY) -m pytest -n $(JOBS) --durations=10

lint: setup
	$(VENV)/bin/ruff check companion tests benchmarks data_scripts

clean:
	rm -rf runs .pytest_cache
