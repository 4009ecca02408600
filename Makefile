# Two commands for a fresh clone (Python 3.11, no GPU needed):
#   make report   set up, build the zoo, run every notebook on the ci profile, build runs/index.html
#   make test     set up, build the zoo (its time printed apart), run the tests (unit + every notebook)
# and one to train the shared models ahead of the notebooks (they load them from runs/cache/zoo):
#   make zoo      set up, then `companion zoo build --jobs 2` (one line per model with its time)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
JOBS ?= 2

.PHONY: setup data speech zoo report test lint clean

setup: $(VENV)/.installed data speech

# CPU torch first, pinned, so no dependency range can pull another (CUDA) build; then the package.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	touch $@

# Fashion-MNIST (30 MB) for the real-data sections: Debian's package when apt is usable, else the
# checksummed download. Optional: notebooks say so and skip those sections when it is missing. Files already
# there are checked against their published MD5s (once; later checks read a stamp): damaged ones are prepared again.
REQUIRE_FASHION = $(PY) -c "import companion.data as d; d.require('fashion_mnist')"
data:
	@$(REQUIRE_FASHION) 2>/dev/null || \
	( { [ "$$(id -u)" = 0 ] && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 && \
	    $(REQUIRE_FASHION) 2>/dev/null; } || \
	  $(PY) data_scripts/fashion_mnist.py || \
	  echo "note: Fashion-MNIST not installed; its notebook sections will be skipped" )

# espeak-ng (Debian's package) synthesises the speech notebooks' corpora. Installed when missing (as root, else
# through sudo); if that fails, one line says how, and those notebooks stop in their data cell saying the same.
ESPEAK_INSTALL = apt-get update -qq && apt-get install -y -qq --no-install-recommends espeak-ng
speech:
	@command -v espeak-ng >/dev/null 2>&1 || \
	( { if [ "$$(id -u)" = 0 ]; then $(ESPEAK_INSTALL); else sudo -n sh -c '$(ESPEAK_INSTALL)'; fi; } >/dev/null 2>&1 && \
	  command -v espeak-ng >/dev/null 2>&1 ) || \
	echo "note: espeak-ng is not installed (the speech notebooks need it): sudo apt-get install -y --no-install-recommends espeak-ng"

zoo: setup
	$(VENV)/bin/companion zoo build --jobs 2

report: zoo
	$(VENV)/bin/companion run-all --profile ci --jobs $(JOBS)
	$(VENV)/bin/companion report

test: zoo
	$(PY) -m pytest -n $(JOBS) --dist loadgroup --durations=10

lint: setup
	$(VENV)/bin/ruff check companion tests benchmarks data_scripts

clean:
	rm -rf runs .pytest_cache
