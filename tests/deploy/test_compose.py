"""deploy/compose: one host runs the whole fleet, one worker per GPU, from our images."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.support import DEPLOY, compose_interpolate, parse_command

COMPOSE = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
WORKERS = sorted(name for name in SERVICES if name.startswith("worker-"))


def command(service: str):
    """The parsed `lorafleet` command of a service (the images' entry point is lorafleet)."""
    return parse_command([compose_interpolate(w) for w in SERVICES[service]["command"]])[1]


def test_images_are_ours_or_etcd_and_ours_are_built_here():
    for name, spec in SERVICES.items():
        image = spec["image"].split(":")[0]
        assert image in ("lorafleet", "lorafleet-worker", "quay.io/coreos/etcd"), name
        if image != "quay.io/coreos/etcd" and "build" in spec:
            dockerfile = DEPLOY.parent / spec["build"]["dockerfile"]
            assert dockerfile.exists()
            assert ("worker" in dockerfile.name) == (image == "lorafleet-worker")
            assert (DEPLOY / "compose" / spec["build"]["context"]).resolve() == DEPLOY.parent


@pytest.mark.parametrize("worker", WORKERS)
def test_each_worker_reserves_its_own_gpu_and_advertises_its_name(worker):
    (device,) = SERVICES[worker]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert device["device_ids"] == [worker.removeprefix("worker-")]
    args = command(worker)
    assert args.advertise_address == f"{worker}:{args.port}"
    assert args.worker_id == worker and args.device == "cuda" and args.host == "0.0.0.0"
    assert args.controlplane == f"controlplane:{command('controlplane').port}"
    mounts = [compose_interpolate(v).split(":")[1] for v in SERVICES[worker]["volumes"]]
    assert str(args.model) in mounts


def test_workers_use_distinct_gpus_and_host_ports():
    gpus = [SERVICES[w]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
            for w in WORKERS]
    published = [compose_interpolate(p).rsplit(":", 2)[1]
                 for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(set(gpus)) == len(gpus) == len(WORKERS) >= 1
    assert len(set(published)) == len(published)


def test_the_wiring_between_services():
    controlplane, gateway = command("controlplane"), command("gateway")
    etcd = SERVICES["etcd"]["command"]
    assert controlplane.etcd == "http://etcd:2379" and "--advertise-client-urls=http://etcd:2379" in etcd
    assert gateway.controlplane == f"controlplane:{controlplane.port}"
    assert SERVICES["gateway"]["environment"]["LORAFLEET_HEALTH_PORT"] == str(gateway.port)
    for name in ("controlplane", "gateway", *WORKERS):
        needs = SERVICES[name]["depends_on"]
        assert all(v["condition"] == "service_healthy" for v in needs.values())
    assert SERVICES["worker-0"].get("profiles") is None  # one GPU: `up` needs no profile
