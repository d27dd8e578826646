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

.PHONY: demo test install lint clean up down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing can pull a CUDA build on a CPU machine
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,aws,onnx]"
	touch $(STAMP)

install: $(STAMP)

## Set up, start the local stack, and run the whole pipeline on the sample data with the embedded model.
## The stack (Prefect UI, MLflow UI, endpoint) stays up for exploring; `make down` stops it.
## The demo turns on the operator policy FINESHIP_AUTO_PROMOTE for its home (written to <home>/operator.env, so
## `fineship deploy` and `fineship predict` accept its pipeline-signed champion afterwards): a candidate that passes
## the gate is promoted and deployed with the pipeline's own signature, without a reviewer.
demo: export FINESHIP_AUTO_PROMOTE := true
demo: $(STAMP)
	@home="$${FINESHIP_HOME:-.fineship}"; mkdir -p "$$home"; \
	  grep -qsx 'FINESHIP_AUTO_PROMOTE=true' "$$home/operator.env" || echo 'FINESHIP_AUTO_PROMOTE=true' >> "$$home/operator.env"; \
	  echo "demo: operator policy FINESHIP_AUTO_PROMOTE=true in $$home/operator.env (a gated candidate is promoted and deployed without a reviewer; delete the line to require reviewers)"
	$(MAKE) --no-print-directory up
	$(BIN)/fineship run --config flows/configs/demo.yaml

## Start the local stack: Prefect server + process work pool + worker, MLflow server (127.0.0.1).
up: $(STAMP)
	$(BIN)/fineship stack up

## Stop the local stack (worker first, then the servers, then local endpoints).
down:
	@if [ -x $(BIN)/fineship ]; then $(BIN)/fineship stack down; else echo "nothing to stop (no .venv)"; fi

## Set up and run the test suite (slow real-data tests run when RUN_SLOW=1).
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(RUN_SLOW),,-m "not slow") $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .fineship build dist *.egg-info .pytest_cache
