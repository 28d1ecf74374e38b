# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Every target installs what it needs and is cached: a second run rebuilds nothing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache
CLUSTER_DIR := $(CACHE)/cluster
TINY_MODEL := $(CACHE)/tiny-model
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# --- installs (cached) ------------------------------------------------------

$(VENV)/.base-installed: pyproject.toml requirements/operator.txt
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python >= 3.11"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -c requirements/operator.txt
	@touch $@

.PHONY: venv
venv: $(VENV)/.base-installed ## Project virtualenv with the operator and dev tools

.PHONY: serve-deps
serve-deps: venv ## Ray + vLLM (CPU) serving stack in the virtualenv
	@bash hack/install-serve-deps.sh $(VENV)

.PHONY: serve-lock
serve-lock: venv ## Re-resolve requirements/serve-cpu.txt (then review and commit it)
	@bash hack/install-serve-deps.sh --lock $(VENV)

.PHONY: operator-lock
operator-lock: venv ## Re-resolve requirements/operator.txt, the operator image's pins (then review and commit it)
	$(PY) hack/lock-operator.py

.PHONY: tools
tools: ## Go-built etcd, Kubernetes, KubeRay, KWOK, helm and actionlint binaries in bin/
	@bash hack/build-tools.sh

.PHONY: model
model: serve-deps ## The tiny random-weight model used by serve tests and the demo
	@$(PY) -m tests.support.tinymodel --out $(TINY_MODEL)

# --- generated files (CI fails when a committed copy is stale) -------------

CRD_FILE := manifests/crd/llmservices.llmservice.dev.yaml

.PHONY: crd
crd: venv tools ## Regenerate the LLMService CRD from the pydantic models (and the chart's copy)
	$(PY) -m llmservice_operator.api.crd $(CRD_FILE)
	bash hack/gen-manifests.sh

.PHONY: manifests
manifests: tools ## Copy the CRD into the chart, render manifests/install.yaml from the chart
	bash hack/gen-manifests.sh

.PHONY: check-generated
check-generated: venv tools ## Fail if a generated file differs from a fresh generation
	$(PY) -m llmservice_operator.api.crd $(CRD_FILE) --check
	bash hack/gen-manifests.sh --check
	$(PY) hack/gen-argocd.py --check
	$(PY) hack/lock-operator.py --check

.PHONY: argocd
argocd: venv ## Regenerate manifests/argocd/argocd-cm-patch.yaml from the health check Lua
	$(PY) hack/gen-argocd.py

.PHONY: golden
golden: venv ## Rewrite the rendering golden files (review the diff before committing)
	$(PY) -m pytest tests/unit/test_golden.py --update-golden -q

# --- checks and tests -----------------------------------------------------

.PHONY: lint
lint: venv check-versions lint-workflows ## ruff + mypy, versions, workflows
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: check-versions
check-versions: venv ## Fail if a version in the repository differs from pyproject.toml's
	$(PY) hack/check-versions.py

.PHONY: lint-workflows
lint-workflows: ## actionlint on .github/workflows (shell checks only where shellcheck is installed)
	@bash hack/build-tools.sh actionlint
	bin/actionlint

.PHONY: test-unit
test-unit: venv tools ## Unit tests (no cluster; the chart tests run bin/helm)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: venv tools ## Tests against the local control plane (etcd, kube-apiserver, KubeRay, KWOK)
	$(PY) -m pytest tests/cluster -m cluster $(PYTEST_ARGS)

.PHONY: test-serve
test-serve: model ## Tests against real Ray + vLLM on CPU
	$(PY) -m pytest tests/serve -m serve $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: model tools ## Operator promises on the real-Ray ground, under load (tests/e2e, root)
	@rm -f $(CACHE)/e2e/results.jsonl
	$(PY) -m pytest tests/e2e -m e2e $(PYTEST_ARGS)
	@$(PY) -m tests.e2e.report $(CACHE)/e2e/results.jsonl

.PHONY: test-compat
test-compat: venv model ## Smoke tests on every Kubernetes x KubeRay cell of the matrix (not in CI: ~1 h on 2 cores)
	@bash hack/test-compat.sh $(CELLS)

.PHONY: test
test: lint check-generated test-unit test-cluster test-serve test-e2e ## Everything: lint, unit, cluster, serve and real-Ray tests

# --- the local ground -------------------------------------------------------

.PHONY: cluster-up
cluster-up: venv tools ## Start the local control plane in the background
	@$(PY) -m tests.cluster.harness up --dir $(CLUSTER_DIR)

.PHONY: cluster-down
cluster-down: venv ## Stop the local control plane
	@$(PY) -m tests.cluster.harness down --dir $(CLUSTER_DIR)

.PHONY: demo-down
demo-down: venv ## Stop the demo's Ray nodes, operator and the local control plane
	@bash hack/demo-ray-node.sh down
	@if [ -f $(CLUSTER_DIR)/operator.pid ]; then kill $$(cat $(CLUSTER_DIR)/operator.pid) 2>/dev/null || true; rm -f $(CLUSTER_DIR)/operator.pid; fi
	@$(PY) -m tests.cluster.harness down --dir $(CLUSTER_DIR)

.PHONY: demo
demo: venv tools model ## End to end on the local control plane (see README)
	@bash hack/demo.sh

.PHONY: bench-serve
bench-serve: model ## vLLM server vs stock ray.serve.llm vs our serve_app on CPU (results/)
	@$(PY) -c "import matplotlib" 2>/dev/null || $(PY) -m pip install -q "matplotlib>=3.8"
	$(PY) -m bench.serve_bench

# The GPU machine's own Python with vLLM and Ray (not this repo's CPU virtualenv).
GPU_PY ?= python3
GPU_MODEL_DIR ?= /tmp/l8b
GPU_BENCH = PYTHONPATH=.:operator:$$PYTHONPATH $(GPU_PY) -m bench.gpu_bench

.PHONY: bench-serve-gpu
bench-serve-gpu: ## The same three side by side on one GPU, Llama-3.1-8B shape (docs/performance.md)
	$(GPU_BENCH) up --model-dir $(GPU_MODEL_DIR)
	$(GPU_BENCH) measure --rounds 3 --out results/gpu-bench.jsonl
	$(GPU_BENCH) report results/gpu-bench.jsonl
	$(GPU_BENCH) down

.PHONY: bench-operator
bench-operator: venv tools ## N (default 1,000) LLMServices at once against the operator (local control plane)
	$(PY) -m bench.operator_bench -n $(or $(N),1000)

.PHONY: bench-chaos
bench-chaos: venv tools ## 100 operator SIGKILLs and 5 API server restarts under load over 200 LLMServices
	$(PY) -m bench.chaos -n 200 --kills 100 --apiserver-restarts 5

.PHONY: bench-render
bench-render: venv ## Render time per LLMService (median of 1,000)
	$(PY) -m bench.render_bench -n 1000

.PHONY: clean
clean: ## Remove the virtualenv and caches (keeps Go's build cache)
	rm -rf $(VENV) $(CACHE) bin
