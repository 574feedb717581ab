"""The deployment material stays true: every lorafleet command line in deploy/ (rendered
Kubernetes overlays, compose services, systemd units as systemd and the shell expand them)
parses with the real command's options. Deeper checks live in tests/deploy/."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    OVERLAYS,
    compose_interpolate,
    expand_references,
    lorafleet_commands,
    parse_command,
    read_env_file,
    run_exec_start,
)

KUBERNETES_COMMANDS = [c for overlay in OVERLAYS for c in lorafleet_commands(overlay)]
COMPOSE = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
OUR_IMAGES = ("lorafleet:", "lorafleet-worker:")
UNITS = {"lorafleet-controlplane.service": "controlplane",
         "lorafleet-gateway.service": "gateway", "lorafleet-worker@.service": "worker"}


def test_every_overlay_has_the_fleet():
    found = {(name.split(":")[0], name.split("/")[-1]) for name, _, _ in KUBERNETES_COMMANDS}
    assert set(OVERLAYS) == {"external-etcd", "gaie", "insecure-plaintext", "production"}
    for overlay in OVERLAYS:
        assert {(overlay, "controlplane"), (overlay, "worker")} <= found
    assert ("production", "gateway") in found and ("gaie", "gateway") not in found


@pytest.mark.parametrize("name,argv,env", KUBERNETES_COMMANDS,
                         ids=[c[0] for c in KUBERNETES_COMMANDS])
def test_kubernetes_command_parses(name, argv, env):
    subcommand, _ = parse_command(expand_references(argv, env))
    assert subcommand in name


OUR_SERVICES = sorted(name for name, spec in COMPOSE["services"].items()
                      if spec["image"].startswith(OUR_IMAGES))


def test_compose_runs_the_fleet():
    assert set(OUR_SERVICES) == {"controlplane", "gateway", "worker-0", "worker-1"}


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_compose_command_parses(service):
    spec = COMPOSE["services"][service]
    subcommand, _ = parse_command([compose_interpolate(w) for w in spec["command"]])
    assert subcommand in service


@pytest.mark.parametrize("instance", ["0", "9", "10", "63"])
def test_worker_unit_parses_for_any_gpu(instance, tmp_path):
    env = read_env_file(DEPLOY / "systemd" / "lorafleet.env.example")
    argv = run_exec_start(DEPLOY / "systemd" / "lorafleet-worker@.service", env, instance,
                          "gpu-host", tmp_path)
    _, args = parse_command(argv)
    assert args.port == 50100 + int(instance)
    assert args.host == env["LORAFLEET_HOST"]


@pytest.mark.parametrize("unit", ["lorafleet-controlplane.service", "lorafleet-gateway.service"])
def test_service_units_parse(unit, tmp_path):
    env = read_env_file(DEPLOY / "systemd" / "lorafleet.env.example")
    argv = run_exec_start(DEPLOY / "systemd" / unit, env, "", "gpu-host", tmp_path)
    subcommand, args = parse_command(argv)
    assert subcommand == UNITS[unit]
    assert args.host == env["LORAFLEET_HOST"]
