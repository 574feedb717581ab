"""The deployment examples stay true: every lorafleet command line in deploy/ parses
with the real command's options."""

from __future__ import annotations

import pathlib
import re
import shlex

import pytest
import yaml

from lorafleet.controlplane.cli import build_parser as controlplane_parser
from lorafleet.dataplane.serve import serve_parser, worker_parser

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
PARSERS = {"serve": serve_parser, "worker": worker_parser, "controlplane": controlplane_parser}


def _kubernetes_commands():
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            spec = (document or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                command = container.get("command", [])
                if command[:1] == ["lorafleet"]:
                    yield f"{path.name}:{container['name']}", command[1:]


def _systemd_commands():
    for path in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                words = shlex.split(line.removeprefix("ExecStart="))
                words = [re.sub(r"\$\{?\w+\}?", "x", w) for w in words if w != "$ADAPTERS"]
                yield path.name, [w.replace("%i", "0") for w in words[1:]]


COMMANDS = list(_kubernetes_commands()) + list(_systemd_commands())


def test_the_examples_exist():
    assert {name.split(":")[0] for name, _ in COMMANDS} >= {
        "controlplane.yaml", "worker.yaml", "lorafleet-worker@.service"}


@pytest.mark.parametrize("name,argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_line_parses(name, argv):
    subcommand, *rest = argv
    args = PARSERS[subcommand]().parse_args(rest)
    assert args is not None
