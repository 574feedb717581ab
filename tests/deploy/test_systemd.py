"""deploy/systemd: units for one host bind a configurable address from the environment
file, compute ports that stay valid for any GPU index, and restart on failure."""

from __future__ import annotations

import re

import pytest

from tests.deploy.support import DEPLOY, parse_command, read_env_file, run_exec_start, unit_values

SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
ENV = read_env_file(SYSTEMD / "lorafleet.env.example")


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_units_read_the_environment_file_and_restart_on_failure(unit):
    settings, key = unit_values(unit, "EnvironmentFile")  # the key: docs/security.md
    assert settings == "/etc/lorafleet/lorafleet.env"
    assert re.fullmatch(r"/etc/lorafleet/(controlplane|worker|gateway)\.key", key)
    assert unit_values(unit, "Restart") == ["on-failure"]
    assert unit_values(unit, "User") == ["lorafleet"]
    (exec_start,) = unit_values(unit, "ExecStart")
    used = set(re.findall(r"\$\{(\w+)\}|\$\$(\w+)", exec_start))
    assert {name for pair in used for name in pair if name} <= set(ENV)
    assert "--host" in exec_start and "LORAFLEET_HOST" in exec_start


def test_worker_ports_stay_valid_and_distinct_for_any_gpu(tmp_path):
    unit = SYSTEMD / "lorafleet-worker@.service"
    seen = set()
    for gpu in range(64):
        _, args = parse_command(run_exec_start(unit, ENV, str(gpu), "gpu-host", tmp_path))
        ports = {args.port, args.http_port, args.metrics_port}
        assert len(ports) == 3 and all(1024 < p <= 65535 for p in ports)
        assert not ports & seen, f"GPU {gpu} reuses a port"
        seen |= ports
        assert args.advertise_address == f"{ENV['LORAFLEET_ADVERTISE_HOST']}:{args.port}"
        assert args.worker_id == f"gpu-host-gpu{gpu}"
    assert not seen & {50050, 50051, 8080, 9401}  # the gateway's and control plane's


@pytest.mark.parametrize("gpu", [0, 9, 10, 63])
def test_worker_sees_only_its_gpu(gpu, tmp_path):
    unit = SYSTEMD / "lorafleet-worker@.service"
    assert "CUDA_VISIBLE_DEVICES=%i" in unit_values(unit, "Environment")
    _, args = parse_command(run_exec_start(unit, ENV, str(gpu), "gpu-host", tmp_path))
    assert args.port == 50100 + gpu and args.device == "cuda"
    assert args.max_lora_rank == 32 and args.dtype == "bfloat16"  # LORAFLEET_WORKER_ARGS


def test_worker_stops_after_its_grace(tmp_path):
    unit = SYSTEMD / "lorafleet-worker@.service"
    _, args = parse_command(run_exec_start(unit, ENV, "0", "gpu-host", tmp_path))
    assert int(unit_values(unit, "TimeoutStopSec")[0]) > args.grace_seconds
