# The two set-up commands of the README: `make book` builds the site, `make test` runs every
# test. Both create .venv and install the pinned dependencies on their first run; after that they
# need no network. `make bench` (a third command, not part of the tests) runs benchmarks/.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

# TensorFlow's C++ start-up notices would otherwise land in every chapter's stderr, and progress
# bars (shown where a person is watching, a notebook included) in every chapter's output.
export TF_CPP_MIN_LOG_LEVEL := 2
export UNDERSTANDING_NN_PROGRESS := off

# The site's browser tests (tests/test_site.py) drive a system Chromium: Debian's package where
# none is installed (no browser download), or a Chrome the machine already has.
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser || command -v google-chrome || echo /usr/bin/chromium)
export CHROMIUM

.PHONY: book test bench notebooks clean

$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip==26.3"
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps --no-build-isolation --editable .
	@touch $@

# Sphinx re-reads only changed pages, and jupyter-cache keys outputs on each chapter's code
# alone. The package's source is hashed here too: when it changed, the execution cache is
# cleared and every page is rebuilt (--all), so no page shows outputs of an older package.
book: $(INSTALLED)
	@start=$$(date +%s); \
	source_hash=$$(cat $$(find src -name '*.py' | sort) pyproject.toml requirements.txt | sha256sum | cut -c1-16); \
	rebuild=""; \
	if [ "$$(cat _build/.source-hash 2>/dev/null)" != "$$source_hash" ]; then \
		rm -rf _build/.jupyter_cache; rebuild="--all"; \
	fi; \
	$(BIN)/jupyter-book build . $$rebuild --warningiserror --nitpick --keep-going; status=$$?; \
	if [ $$status -eq 0 ]; then echo "$$source_hash" > _build/.source-hash; fi; \
	echo "make book: $$(( $$(date +%s) - start )) s (exit $$status)"; \
	exit $$status

/usr/bin/chromium:
	@sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	packages="chromium fonts-liberation"; \
	$$sudo apt-get install -y -q --no-install-recommends $$packages \
		|| { $$sudo apt-get update -q && $$sudo apt-get install -y -q --no-install-recommends $$packages; }

test: $(INSTALLED) $(CHROMIUM)
	@start=$$(date +%s); \
	$(BIN)/python -m pytest; status=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s (exit $$status)"; \
	exit $$status

# The benchmark suite (benchmarks/, not part of the tests): prints one table and writes it to
# benchmarks/results.csv; the README's table is generated from it (python -m benchmarks --readme).
# BENCH_FLAGS passes options to the suite: `make bench BENCH_FLAGS=--quick` checks that it works.
bench: $(INSTALLED)
	@start=$$(date +%s); \
	$(BIN)/python -m benchmarks $(BENCH_FLAGS); status=$$?; \
	echo "make bench: $$(( $$(date +%s) - start )) s (exit $$status)"; \
	exit $$status

# Regenerate the chapters' notebooks for Colab and Binder (tests/test_notebooks.py checks them).
notebooks: $(INSTALLED)
	$(BIN)/python scripts/notebooks.py

clean:
	rm -rf _build
