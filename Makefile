# lungsearch: the two README commands are `make demo` and `make test`; each sets up .venv itself.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONHASHSEED := 0
# Offline everywhere: nothing downloads models or data at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
PYTEST_ARGS ?=

.PHONY: venv kfp-venv lint format test test-fast demo bench protos protos-check chart-check rayjobs kubeflow lock clean help

help:
	@echo "make demo        run the main job end to end on phantom data (local Ray, milvus-lite)"
	@echo "make test        lint, then run the test suite (sets up .venv first)"
	@echo "make lint        ruff check and ruff format --check (config in pyproject.toml)"
	@echo "make format      ruff format and the safe ruff fixes"
	@echo "make bench       run the benchmarks (JSON results under benchmarks/results/)"
	@echo "make protos      regenerate lungsearch/_proto from protos/"
	@echo "make chart-check render, lint and validate the Helm chart and k8s manifests offline"
	@echo "make rayjobs     regenerate k8s/ manifests and the pipeline's RayJob spec from k8s/rayjob-spec.yaml"
	@echo "make kubeflow    compile the Kubeflow pipeline (separate .venv-kfp; kfp pins its own protobuf)"

venv:
	@bash tools/ensure-venv.sh

# Lint first (seconds): a red lint fails the run before the half hour of tests.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# .venv-kfp too: the suite recompiles the Kubeflow pipeline and compares it with the committed YAML.
test: venv kfp-venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow and not ray" $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/lungsearch demo

# BENCH="serve_latency load" picks some; QUICK=1 passes --quick (small sizes, no result files).
bench: venv
	$(PY) -m benchmarks $(if $(QUICK),--quick) $(BENCH)

protos: venv
	$(PY) tools/gen_protos.py

protos-check: venv
	$(PY) tools/gen_protos.py --check

chart-check: venv
	$(PY) -m pytest tests/charts -q

kfp-venv:
	@bash tools/ensure-kfp-venv.sh

rayjobs: venv
	$(PY) tools/gen_rayjobs.py

kubeflow: kfp-venv
	.venv-kfp/bin/python -m k8s.kubeflow.pipeline --out k8s/kubeflow/pipeline.yaml

# Re-resolve the pinned set from requirements/base.in in a scratch venv.
lock:
	rm -rf .venv-lock && python3.11 -m venv .venv-lock
	.venv-lock/bin/pip install -q -r requirements/bootstrap.txt
	.venv-lock/bin/pip install -q -r requirements/base.in
	{ head -2 requirements/lock.txt; .venv-lock/bin/pip freeze --all | grep -v -E '^(pip|setuptools|wheel|pyradiomics|lungsearch)=='; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt && rm -rf .venv-lock

clean:
	rm -rf .pytest_cache build *.egg-info
