# The two commands of the README: `make run` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# Tests and the default grid never reach a model hub: fail fast instead of waiting on the network.
export HF_HUB_OFFLINE ?= 1

.PHONY: install run test lint format bench lock clean

install: $(STAMP)

# Reinstall only when the pins or the package metadata change: a second `make` is a no-op.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# The default grid's second dataset is Fashion-MNIST from Debian's dataset-fashion-mnist package.
FASHION := /usr/share/datasets/fashion-mnist

$(FASHION):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dataset-fashion-mnist \
	  || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dataset-fashion-mnist)

run: $(STAMP) $(FASHION)
	$(BIN)/snakemake --cores $(CORES)
	@echo "report: results/report/index.html"

test: lint
	$(BIN)/python -m pytest

# Style and workflow checks; `make test` runs them first, so CI enforces them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules/
	$(BIN)/snakemake --lint --quiet

# Rewrite the files in the project's style (what `make lint` checks).
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow/rules/

bench: $(STAMP)
	$(BIN)/python benchmarks/cold_run.py

# Re-resolve the pins from requirements.in (needs the package index).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -r requirements.in
	.venv-lock/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf results/* .snakemake
	touch results/.gitkeep
