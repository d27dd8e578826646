# fineship: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: demo test test-all install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing can pull a CUDA build on a CPU machine
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,aws]"
	touch $(STAMP)

install: $(STAMP)

## Set up and run the whole pipeline on the sample data with the embedded model.
demo: $(STAMP)
	$(BIN)/fineship run --config flows/configs/demo.yaml

## Set up and run the test suite (slow real-data tests run when RUN_SLOW=1).
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(RUN_SLOW),,-m "not slow") $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check flows tasks components infra tests

clean:
	rm -rf .fineship build dist *.egg-info .pytest_cache
