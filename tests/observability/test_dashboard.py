"""deploy/grafana/lorafleet.json queries only series that live components export: every
metric name in every PromQL expression, and every label it selects or groups by, is found
on a live worker's, gateway's or control plane's /metrics."""

from __future__ import annotations

import json
import pathlib
import re

import grpc
import pytest

from lorafleet.controlplane.server import ControlPlane
from lorafleet.dataplane.gateway.app import GatewayConfig, start_gateway
from lorafleet.dataplane.server.app import start_worker
from lorafleet.inference.v1 import inference_service_pb2 as ipb
from lorafleet.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from tests.controlplane.conftest import eventually, fast_config
from tests.observability.scrape import scrape
from tests.server.conftest import worker_config

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lorafleet.json"
# Labels Prometheus adds to every scraped series (they are not on /metrics itself).
TARGET_LABELS = {"instance", "job", "pod", "namespace"}
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "topk", "bottomk", "rate", "irate", "increase",
    "histogram_quantile", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "clamp_min", "clamp_max", "abs", "label_values",
}
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    found = []

    def walk(panels):
        for panel in panels:
            found.extend(target["expr"] for target in panel.get("targets", ()))
            walk(panel.get("panels", ()))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["query"]["query"])
    return found


def parse(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """(metric names, label names matched per metric, label names grouped by) of `expr`."""
    text = re.sub(r'"[^"]*"', '""', expr)
    grouped = set()
    for clause in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        grouped.update(name.strip() for name in clause.group(1).split(",") if name.strip())
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    values = re.fullmatch(rf"label_values\(\s*({_NAME})\s*,\s*({_NAME})\s*\)", text.strip())
    if values:
        grouped.add(values.group(2))
        text = values.group(1)
    matched: dict[str, set[str]] = {}
    for selector in re.finditer(rf"({_NAME})\s*\{{([^}}]*)\}}", text):
        names = set(re.findall(rf"({_NAME})\s*(?:=~|!~|!=|=)", selector.group(2)))
        matched.setdefault(selector.group(1), set()).update(names)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b", " ", text)
    metrics = {t for t in re.findall(_NAME, text) if t not in PROMQL_WORDS}
    return metrics, matched, grouped


def test_the_parser_finds_names_matchers_and_groupings():
    metrics, matched, grouped = parse(
        'histogram_quantile(0.99, sum by (le, version) (rate(a_bucket{adapter="$x"}[5m]))) '
        '/ ignoring (version) group_left sum(vllm:b) + 1e3')
    assert metrics == {"a_bucket", "vllm:b"}
    assert matched == {"a_bucket": {"adapter"}}
    assert grouped == {"le", "version"}
    assert parse("label_values(c_total, adapter)") == ({"c_total"}, {}, {"adapter"})


async def _live_labels(etcd, checkpoint) -> dict[str, set[str]]:
    """sample name -> label names, over a live control plane, worker and gateway."""
    plane = ControlPlane(fast_config(etcd, metrics_port=0))
    await plane.start()
    address = f"127.0.0.1:{plane.port}"
    worker = await start_worker(worker_config(checkpoint, worker_id="w0", model_name="tiny"),
                                controlplanes=(address,), heartbeat_seconds=0.3, metrics_port=0)
    gateway = await start_gateway(GatewayConfig(controlplanes=(address,), port=0, metrics_port=0))
    try:
        await eventually(lambda: gateway.follower.table and gateway.follower.table.workers)
        request = ipb.GenerateRequest(token_ids=ipb.TokenIds(ids=[5, 6, 7]),
                                      sampling=ipb.SamplingParams(max_tokens=2))
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            [m async for m in ipb_grpc.InferenceServiceStub(channel).Generate(request, timeout=30)]
        scrapes = [scrape(port) for port in (worker.metrics_port, gateway.metrics_port,
                                             plane.metrics_port)]
    finally:
        await gateway.stop(0.5)
        await worker.stop(0.5)
        await plane.stop()
    labels: dict[str, set[str]] = {}
    for found in scrapes:
        for name, samples in found.samples.items():
            labels.setdefault(name, set()).update(k for s in samples for k in s.labels)
    return labels


@pytest.mark.slow
async def test_every_queried_series_and_label_exists_on_a_live_fleet(etcd, base_checkpoint):
    dashboard = json.loads(DASHBOARD.read_text())
    live = await _live_labels(etcd, base_checkpoint)
    problems = []
    for expr in queries(dashboard):
        metrics, matched, grouped = parse(expr)
        problems += [f"{name} (in {expr})" for name in metrics if name not in live]
        for name, names in matched.items():
            problems += [f"{name}{{{label}}}" for label in names - live.get(name, set())]
        available = set().union(*(live.get(name, set()) for name in metrics)) | TARGET_LABELS
        problems += [f"by ({label}) in {expr}" for label in grouped - available]
    assert problems == []


def test_the_dashboard_covers_fleet_adapters_and_a_rollout():
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Fleet", "Adapters", "Rollout: $adapter, version by version"]
    exprs = " ".join(queries(dashboard))
    for needle in ("lorafleet_controlplane_workers", "vllm:num_requests_waiting",
                   "vllm:kv_cache_usage_perc", "lorafleet_generation_tokens_total",
                   "sum by (le, adapter) (rate(lorafleet_time_to_first_token_seconds_bucket",
                   'sum by (version) (rate(lorafleet_requests_total{adapter="$adapter"}',
                   "sum by (le, version) (rate(lorafleet_time_to_first_token_seconds_bucket"):
        assert needle in exprs, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}"
               for p in dashboard["panels"] if p["type"] != "row")
