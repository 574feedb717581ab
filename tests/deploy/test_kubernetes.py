"""deploy/kubernetes: every overlay renders with `kubectl kustomize`, validates against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors), and its
custom resources, references and lorafleet wiring hold together."""

from __future__ import annotations

import pathlib
import re

import kubernetes_validate
import pytest

from tests.deploy.support import (
    OVERLAYS,
    ROOT,
    find,
    lorafleet_commands,
    parse_command,
    pod_spec,
    render,
    workloads,
)

# Oldest and newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# Custom resources kubernetes-validate has no schema for; checked by CUSTOM_CHECKS below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("monitoring.coreos.com/v1", "PrometheusRule"),
                ("inference.networking.k8s.io/v1", "InferencePool"),
                ("gateway.networking.k8s.io/v1", "HTTPRoute"),
                ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}
# cert-manager's Issuer kinds: exactly one of these in an Issuer's spec.
ISSUER_TYPES = {"selfSigned", "ca", "vault", "venafi", "acme"}
SOURCES = "\n".join(p.read_text() for d in ("dataplane", "controlplane")
                    for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_schemas(overlay, version):
    for resource in render(overlay):
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.utils.SchemaNotFoundError:
            assert (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS, resource["kind"]


def _check_service_monitor(resource, resources):
    spec = resource["spec"]
    services = [s for s in find(resources, "Service") if _selects(
        spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))]
    assert services, f"ServiceMonitor {resource['metadata']['name']} selects no Service"
    port_names = {p.get("name") for s in services for p in s["spec"]["ports"]}
    assert spec["endpoints"] and {e["port"] for e in spec["endpoints"]} <= port_names


def _check_prometheus_rule(resource, resources):
    for group in resource["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"]
            for metric in re.findall(r"\b(lorafleet_\w+|vllm:\w+)", rule["expr"]):
                assert metric in SOURCES or metric.removesuffix("_total") in SOURCES, metric


def _check_inference_pool(resource, resources):
    spec = resource["spec"]
    assert 1 <= len(spec["targetPorts"]) <= 8
    assert all(1 <= p["number"] <= 65535 for p in spec["targetPorts"])
    picker = spec["endpointPickerRef"]
    assert picker["name"] and picker.get("kind", "Service") == "Service"
    assert picker["failureMode"] in ("FailOpen", "FailClose")
    (service,) = find(resources, "Service", picker["name"])
    assert picker["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}


def _check_http_route(resource, resources):
    rules = resource["spec"]["rules"]
    assert resource["spec"]["parentRefs"][0]["name"]
    for ref in (ref for rule in rules for ref in rule["backendRefs"]):
        assert find(resources, ref["kind"], ref["name"]), ref


def _check_issuer(resource, resources):
    (kind,) = set(resource["spec"]) & ISSUER_TYPES
    assert not set(resource["spec"]) - ISSUER_TYPES
    if kind == "ca":  # signs with the key pair in this Secret: a Certificate must make it
        secret = resource["spec"]["ca"]["secretName"]
        assert [c for c in find(resources, "Certificate")
                if c["spec"]["secretName"] == secret and c["spec"].get("isCA")]


def _check_certificate(resource, resources):
    spec = resource["spec"]
    assert spec["secretName"] and (spec.get("commonName") or spec.get("dnsNames"))
    ref = spec["issuerRef"]
    assert find(resources, ref.get("kind", "Issuer"), ref["name"]), ref
    assert len(spec.get("commonName", "")) <= 64  # X.509's limit, which cert-manager checks
    assert spec["privateKey"]["algorithm"] in ("RSA", "ECDSA", "Ed25519")


CUSTOM_CHECKS = {"ServiceMonitor": _check_service_monitor,
                 "PrometheusRule": _check_prometheus_rule,
                 "InferencePool": _check_inference_pool, "HTTPRoute": _check_http_route,
                 "Issuer": _check_issuer, "Certificate": _check_certificate}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_have_their_required_fields(overlay):
    resources = render(overlay)
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            assert resource["metadata"]["name"] and resource["spec"]
            CUSTOM_CHECKS[resource["kind"]](resource, resources)


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(resources):
    return [r["spec"]["template"]["metadata"]["labels"]
            for r in resources if r["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlay):
    """What the original manifests lacked: each Secret (or the cert-manager Certificate
    that writes it), ConfigMap key, claim, Service selector and autoscaler target named is
    in the render."""
    resources = render(overlay)
    issued = {c["spec"]["secretName"] for c in find(resources, "Certificate")}
    for resource, container in workloads(resources):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                (config,) = find(resources, "ConfigMap", ref["name"])
                assert ref["key"] in config["data"], ref
        for source in container.get("envFrom", []):
            kind, ref = next(iter(source.items()))
            assert ref.get("optional") or find(
                resources, {"configMapRef": "ConfigMap", "secretRef": "Secret"}[kind],
                ref["name"])
        templates = {t["metadata"]["name"] for t in resource["spec"].get(
            "volumeClaimTemplates", [])}
        for volume in pod_spec(resource).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in templates or find(resources, "PersistentVolumeClaim", claim)
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in issued or find(resources, "Secret", name), name
            if "configMap" in volume:
                assert find(resources, "ConfigMap", volume["configMap"]["name"])
    for service in find(resources, "Service"):
        assert any(_selects(service["spec"]["selector"], labels)
                   for labels in _pod_labels(resources)), service["metadata"]["name"]
    for budget in find(resources, "PodDisruptionBudget"):
        assert any(_selects(budget["spec"]["selector"]["matchLabels"], labels)
                   for labels in _pod_labels(resources))
    for scaler in find(resources, "HorizontalPodAutoscaler"):
        target = scaler["spec"]["scaleTargetRef"]
        assert find(resources, target["kind"], target["name"])


def _worker(overlay):
    (worker,) = find(render(overlay), "StatefulSet", "lorafleet-worker")
    (container,) = pod_spec(worker)["containers"]
    ((_, argv, env),) = [c for c in lorafleet_commands(overlay) if c[0].endswith("/worker")]
    return worker, container, argv


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_have_one_gpu_probes_and_an_address(overlay):
    worker, container, argv = _worker(overlay)
    _, args = parse_command([re.sub(r"\$\((\w+)\)", r"\1", w) for w in argv])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["python", "/opt/lorafleet/healthcheck.py"]
    # Its pod's name under the headless Service (test_kubernetes_tls checks the certificate).
    assert args.advertise_address == f"POD_NAME.{worker['spec']['serviceName']}:{args.port}"
    (pod_name,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > args.grace_seconds
    ports = {p["containerPort"] for p in container["ports"]}
    assert {args.port, args.http_port, args.metrics_port} <= ports
    assert args.host == "0.0.0.0"


def test_control_plane_is_two_replicas_one_at_a_time():
    resources = render("production")
    (deployment,) = find(resources, "Deployment", "lorafleet-controlplane")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert find(resources, "PodDisruptionBudget", "lorafleet-controlplane")


def test_etcd_members_name_each_other():
    (etcd,) = find(render("production"), "StatefulSet", "lorafleet-etcd")
    (container,) = pod_spec(etcd)["containers"]
    (cluster,) = [w for w in container["command"] if w.startswith("--initial-cluster=")]
    members = [m.split("=")[0] for m in cluster.split("=", 1)[1].split(",")]
    replicas = etcd["spec"]["replicas"]
    assert members == [f"lorafleet-etcd-{i}" for i in range(replicas)] and replicas == 3
    assert etcd["spec"]["serviceName"] in cluster


def test_external_etcd_replaces_the_members():
    resources = render("external-etcd")
    assert not [r for r in resources if "etcd" in r["metadata"]["name"]
                and r["kind"] != "ConfigMap"]
    (config,) = find(resources, "ConfigMap", "lorafleet-config")
    assert config["data"]["etcd-url"] != "http://lorafleet-etcd:2379"


def test_gaie_pool_targets_the_workers_http_port_and_metrics():
    resources = render("gaie")
    worker, container, argv = _worker("gaie")
    _, args = parse_command([re.sub(r"\$\((\w+)\)", r"\1", w) for w in argv])
    (pool,) = find(resources, "InferencePool")
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert _selects(pool["spec"]["selector"]["matchLabels"], labels)
    assert pool["spec"]["targetPorts"] == [{"number": args.http_port}]
    assert labels["inference.networking.k8s.io/engine-type"] == "vllm"
    (mapping,) = find(resources, "ConfigMap", "lorafleet-epp")
    assert mapping["data"]["MODEL_SERVER_METRICS_PORT"] == str(args.metrics_port)
    for key in ("TOTAL_QUEUED_REQUESTS_METRIC", "TOTAL_RUNNING_REQUESTS_METRIC",
                "KV_CACHE_USAGE_PERCENTAGE_METRIC", "LORA_INFO_METRIC"):
        assert mapping["data"][key].startswith("vllm:") and mapping["data"][key] in SOURCES
    assert not find(resources, "Deployment", "lorafleet-gateway")


def test_the_keys_and_tls_place_is_mounted_everywhere():
    resources = render("production")
    for resource, container in workloads(resources):
        if container["image"].startswith("lorafleet"):
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/etc/lorafleet/auth" in mounts, resource["metadata"]["name"]
    assert find(resources, "Secret", "lorafleet-auth")


def test_images_are_the_ones_make_images_builds():
    makefile = (ROOT / "Makefile").read_text()
    images = {c["image"].split(":")[0] for _, c in workloads(render("production"))}
    assert images == {"lorafleet", "lorafleet-worker", "quay.io/coreos/etcd"}
    for name in ("lorafleet", "lorafleet-worker"):
        assert f"-t {name}:$(IMAGE_TAG)" in makefile
    assert pathlib.Path(ROOT / "deploy/docker/worker.Dockerfile").exists()
