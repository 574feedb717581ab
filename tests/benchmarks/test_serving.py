"""The serving benchmark against live tiny workers: its report is complete and adds up.

No timing is asserted: only that every field is filled, counts add up, percentiles are
ordered, tiers cover every request, and the plots and JSON lines are written.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.serving import main
from benchmarks.serving.checkpoint import ModelShape, write_adapters, write_model
from benchmarks.serving.observe import REQUEST_TIERS
from lorafleet.dataplane.config.worker_config import WorkerConfig
from tests.support.worker_thread import WorkerThread

SHAPE = ModelShape(hidden=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate=128,
                   vocab=384)
NAMES = ["bench/a000", "bench/a001", "bench/a002"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny generated model and three rank-8 adapters for it."""
    root = tmp_path_factory.mktemp("serving-bench")
    model = write_model(root / "model", SHAPE)
    return model, dict(zip(NAMES, write_adapters(root / "adapters", model, [8, 8, 8]),
                           strict=True))


@pytest.fixture(scope="module")
def worker(checkpoint):
    """A live worker with two device slots for three adapters, metrics and OpenAI HTTP."""
    model, adapters = checkpoint
    config = WorkerConfig(model, device="cpu", dtype="float32", kv_cache_bytes=16 << 20,
                          max_loras=2, max_cpu_loras=8, worker_id="bench-test")
    running = WorkerThread(config, adapters=[(n, str(p)) for n, p in adapters.items()],
                           http_port=0)
    yield running
    running.stop()


def _rows(directory) -> list[dict]:
    return [json.loads(line) for line in (directory / "serving.jsonl").read_text().splitlines()]


def _assert_consistent(row: dict, *, num_output: int | None = None) -> None:
    assert row["num_requests"] > 0
    assert row["num_ok"] + row["num_errors"] == row["num_requests"]
    assert row["num_errors"] == 0, row["errors"]
    assert sum(row["tiers"].values()) == row["num_requests"]
    assert set(row["tiers"]) == set(REQUEST_TIERS)
    assert row["output_tok_s"] > 0 and row["req_s"] > 0
    if num_output is not None:
        assert row["output_tokens"] == num_output * row["num_requests"]
    for metric in ("ttft", "tpot", "e2e"):
        p50, p90, p99 = (row[f"{metric}_p{q}_ms"] for q in (50, 90, 99))
        assert 0 < p50 <= p90 <= p99, (metric, p50, p90, p99)
    assert row["ttft_p50_ms"] <= row["e2e_p50_ms"]
    info = row["machine_info"]
    assert info["num_cores"] >= 1 and info["python"] and info["cpu_model"]


@pytest.mark.slow
def test_closed_loop_report_adds_up(worker, tmp_path):
    metrics_url = f"http://127.0.0.1:{worker.running.metrics_port}/metrics"
    status = main(["--addr", worker.address, "--metrics-url", metrics_url,
                   "--concurrency", "4", "--num-requests", "16", "--prompt-len", "uniform:4:20",
                   "--output-len", "fixed:6", "--base-share", "0.25", "--zipf-alpha", "0",
                   "--results-dir", str(tmp_path)])
    assert status == 0
    [row] = _rows(tmp_path)
    _assert_consistent(row, num_output=6)
    assert row["num_requests"] == 16 and row["concurrency"] == 4
    assert row["num_adapters"] == 3  # asked of the worker's ListAdapters
    # Three adapters, two device slots, uniform popularity: some requests met an adapter
    # in host memory, and the worker's /metrics counted the slot installs and evictions
    # (requests arriving together for one host adapter share its install).
    assert row["tiers"]["unknown"] == row["tiers"]["source"] == 0
    assert row["tiers"]["base"] > 0 and row["tiers"]["host"] > 0
    assert row["adapter_loads"]["device"] > 0 and row["adapter_evictions"]["device"] > 0
    assert row["client_cpu_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["client", "http"])
def test_open_loop_over_each_transport(worker, tmp_path, transport):
    http_url = f"http://127.0.0.1:{worker.running.http.port}/v1"
    status = main(["--addr", worker.address, "--http-url", http_url, "--transport", transport,
                   "--rate", "8", "16", "--duration", "1", "--output-len", "fixed:4",
                   "--prompt-len", "lognormal:12:0.5", "--results-dir", str(tmp_path)])
    assert status == 0
    rows = _rows(tmp_path)
    assert [row["rate"] for row in rows] == [8, 16]
    for row in rows:
        _assert_consistent(row, num_output=4)
        assert row["transport"] == transport
    assert (tmp_path / "serving_latency_vs_rate.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cold_preset_starts_its_own_worker(checkpoint, tmp_path):
    model, _ = checkpoint
    status = main(["--preset", "cold", "--quick", "--model", str(model),
                   "--results-dir", str(tmp_path)])
    assert status == 0
    rows = {row["cell"]: row for row in _rows(tmp_path)}
    assert set(rows) == {"device", "host", "source"}
    for row in rows.values():  # three trials, each request counted under the tier it met
        assert row["num_requests"] == 3 == len(row["ttft_samples_ms"])
        assert 0 < row["ttft_p50_ms"] <= row["ttft_p90_ms"] <= row["ttft_p99_ms"]
        assert "--max-cpu-loras" in row["worker_args"]
    assert (tmp_path / "serving_ttft_cdf.png").stat().st_size > 10_000


def test_engine_reference_times_one_request_to_its_first_token(checkpoint):
    # The B=1 TTFT cell of the adapters preset compares the server with this.
    from benchmarks.serving.references import EngineReference
    from benchmarks.serving.workload import RequestSpec

    model, adapters = checkpoint
    engine = EngineReference(model, adapters, max_loras=2, max_cpu_loras=8)
    try:
        short = engine.ttft(RequestSpec(0, NAMES[0], tuple(range(1, 9)), max_tokens=1))
        long = engine.ttft(RequestSpec(1, NAMES[1], tuple(range(1, 9)), max_tokens=40))
        assert short > 0 and long > 0
        assert not engine.engine.has_unfinished()  # each ran to its end
    finally:
        engine.close()


def test_presets_run_on_one_thread_that_is_not_the_main_one(monkeypatch, tmp_path):
    """Checkpoints, the in-process engine and its runs share one thread, not the main one:
    a second thread running torch ops would hold a second OpenMP team, which cuts every
    thread's spin and slows the engine column (see test_vllm_compare's twin)."""
    import threading

    from benchmarks.serving import cli
    from benchmarks.serving.references import on_thread

    seen = []

    def preset(context):
        seen.append(threading.current_thread())
        on_thread(lambda: seen.append(threading.current_thread()))

    monkeypatch.setitem(cli.SCENARIOS, "adapters", preset)
    assert main(["--preset", "adapters", "--results-dir", str(tmp_path), "--no-plots"]) == 0
    assert len(seen) == 2
    assert seen[0] is not threading.main_thread() and seen[1] is seen[0]
