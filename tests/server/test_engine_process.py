"""The engine loop in its own process (the default of `lorafleet serve`): the same tokens
as the engine on a thread, adapters and their metrics, a storm of early cancels, and
what happens when the engine process or the server process dies."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pathlib
import shutil
import signal
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.server.conftest import worker_config
from tests.support.lora_suite import prompts
from tests.support.worker_thread import WorkerThread

ADAPTERS = ("acme/qv8", "beta/q8", "acme/all16")


@pytest.fixture(scope="module")
def in_process(lora_suite):
    """A worker whose engine runs in its own process, with three suite adapters."""
    base, adapters = lora_suite
    worker = WorkerThread(worker_config(base, engine_runs="process"),
                          adapters=[(n, str(adapters[n])) for n in ADAPTERS])
    yield worker
    worker.stop()


def _health(worker) -> int:
    stub = health_pb2_grpc.HealthStub(worker.channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _scrape(worker) -> str:
    url = f"http://127.0.0.1:{worker.running.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _counter(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


@pytest.mark.slow
def test_the_engine_runs_in_another_process(in_process):
    link = in_process.running.worker.bridge.link
    assert link.pid is not None and link.pid != os.getpid()
    assert not hasattr(in_process.running.worker.bridge.link, "engine")  # none in the server


def test_greedy_tokens_match_peft_and_the_engine_on_a_thread(in_process, lora_suite,
                                                             peft_reference):
    cases = [(adapter, prompt) for adapter in ("", *ADAPTERS) for prompt in prompts(2)]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:  # batched together
        got = list(pool.map(lambda case: in_process.generate(*case, max_tokens=12)[0],
                            cases))
    for (adapter, prompt), tokens in zip(cases, got, strict=True):
        assert tokens == peft_reference.greedy(adapter or None, prompt, 12), adapter
    on_thread = WorkerThread(worker_config(lora_suite[0]),
                             adapters=[(n, str(lora_suite[1][n])) for n in ADAPTERS])
    try:
        assert [on_thread.generate(*case, max_tokens=12)[0] for case in cases] == got
    finally:
        on_thread.stop()


def test_load_and_evict_reach_the_engine_process_and_its_metrics(in_process, lora_suite):
    before = _scrape(in_process)
    path = lora_suite[1]["beta/ko16"]
    loaded = in_process.admin.LoadAdapter(wpb.LoadAdapterRequest(
        adapter="zeta/x", source_uri=str(path)), timeout=30).adapter
    assert loaded.tier == wpb.TIER_DEVICE and loaded.rank == 16 and len(loaded.digest) == 64
    tokens, summary = in_process.generate("zeta/x", prompts(1)[0], max_tokens=4)
    assert len(tokens) == 4 and summary.adapter_digest == loaded.digest
    in_process.admin.EvictAdapter(wpb.EvictAdapterRequest(adapter="zeta/x"), timeout=30)
    listed = in_process.admin.ListAdapters(wpb.ListAdaptersRequest()).adapters
    assert "zeta/x" not in {a.adapter for a in listed}
    after = _scrape(in_process)
    for series in ('lorafleet_adapter_loads_total{outcome="ok",tier="host"}',
                   'lorafleet_adapter_loads_total{outcome="ok",tier="device"}',
                   'lorafleet_adapter_evictions_total{tier="device"}',
                   'lorafleet_adapter_evictions_total{tier="host"}'):
        assert _counter(after, series) == _counter(before, series) + 1, series


def test_a_refused_adapter_keeps_its_status_code_across_the_process(in_process, tmp_path):
    failed = 'lorafleet_adapter_loads_total{outcome="failed",tier="host"}'
    before = _counter(_scrape(in_process), failed)
    (tmp_path / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    with pytest.raises(grpc.RpcError) as info:
        in_process.admin.LoadAdapter(wpb.LoadAdapterRequest(
            adapter="acme/broken", source_uri=str(tmp_path)), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "refused" in info.value.details()
    assert _counter(_scrape(in_process), failed) == before + 1


def test_a_storm_of_early_cancels_never_stops_the_engine_process(in_process):
    def early_cancel(i):
        request = pb.GenerateRequest(
            adapter=ADAPTERS[i % 3], token_ids=pb.TokenIds(ids=prompts(3)[i % 3]),
            sampling=pb.SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        if i % 2:
            call = in_process.inference.Generate(request, timeout=30)
            time.sleep((i % 4) * 0.001)
            call.cancel()
            return
        with pytest.raises(grpc.RpcError) as info:
            list(in_process.inference.Generate(request, timeout=0.003 + (i % 5) * 0.002))
        assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                     grpc.StatusCode.CANCELLED)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(early_cancel, range(200)))
    tokens, summary = in_process.generate("acme/qv8", prompts(1)[0], max_tokens=4)
    assert len(tokens) == 4 and summary.finish_reason == pb.FINISH_REASON_LENGTH
    deadline = time.monotonic() + 15
    while (load := in_process.status().load).num_kv_blocks_used or load.num_running:
        assert time.monotonic() < deadline, f"still busy: {load}"
        time.sleep(0.05)
    assert _health(in_process) == health_pb2.HealthCheckResponse.SERVING


def test_a_stop_string_ends_the_request_in_the_engine_process_too(in_process):
    """The server matches the stop string and sends the engine process ABORT with reason
    STOP: the stream ends there, its usage counts the tokens streamed, and the engine
    frees the request at once instead of generating up to max_tokens."""
    def run(stop):
        request = pb.GenerateRequest(text="Hello world", sampling=pb.SamplingParams(
            max_tokens=600, temperature=0, ignore_eos=True, stop=stop))
        messages = list(in_process.inference.Generate(request, timeout=60))
        deltas = [m.delta for m in messages if m.HasField("delta")]
        return ("".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids],
                messages[-1].summary)

    began = time.monotonic()
    full, full_tokens, _ = run([])
    full_seconds = time.monotonic() - began
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1)
                if full[i:i + 2].isascii() and full[i:i + 2].isprintable()
                and full.index(full[i:i + 2]) == i)
    text, tokens, summary = run([stop])
    ended = time.monotonic()
    assert text == full[:full.index(stop)] and summary.matched_stop == stop
    assert tokens == full_tokens[:len(tokens)] and len(tokens) < len(full_tokens) // 4
    assert summary.usage.completion_tokens == len(tokens)
    while (load := in_process.status().load).num_kv_blocks_used or load.num_running:
        assert time.monotonic() - ended < full_seconds / 3, f"still generating: {load}"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_engine_process_fails_streams_and_says_not_serving(lora_suite):
    worker = WorkerThread(worker_config(lora_suite[0], engine_runs="process"))
    try:
        stream = worker.inference.Generate(pb.GenerateRequest(
            token_ids=pb.TokenIds(ids=prompts(1)[0]),
            sampling=pb.SamplingParams(max_tokens=900, temperature=0, ignore_eos=True)),
            timeout=60)
        assert next(stream).HasField("delta")
        os.kill(worker.running.worker.bridge.link.pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        deadline = time.monotonic() + 5  # health is set on the server's loop, just after
        while _health(worker) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health still says SERVING"
            time.sleep(0.02)
        with pytest.raises(grpc.RpcError) as info:
            worker.generate("", prompts(1)[0], max_tokens=2, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert worker.running.fatal.is_set()
    finally:
        worker.stop()


def _environ(pid: int) -> dict[str, str]:
    raw = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def test_the_engine_process_threads_sleep_by_default(in_process):
    # Spinning threads took the CPU of everything else on a shared machine (issue 22 #2;
    # server/process_link.py has the measurements). An operator's own setting passes through.
    child = _environ(in_process.running.worker.bridge.link.pid)
    assert child.get("OMP_WAIT_POLICY") == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


@pytest.mark.parametrize("wait, preset, expected, lora_threads", [
    ("sleep", None, "PASSIVE", None), ("spin", None, None, "all"),
    ("sleep", "ACTIVE", "ACTIVE", None), ("spin", "PASSIVE", "PASSIVE", None)])
def test_cpu_thread_wait_sets_the_engine_process_environment(wait, preset, expected,
                                                             lora_threads, monkeypatch):
    # With spinning threads (one OpenMP team: the engine process) LoRA's small ops use every
    # thread (kernels/cpu/lora.py); an operator's own wait policy decides instead.
    from lorafleet.dataplane.server.process_link import _child_environment
    from lorafleet.kernels.cpu.lora import LORA_THREADS_ENV

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv(LORA_THREADS_ENV, raising=False)
    if preset is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", preset)
    with _child_environment(wait):
        assert os.environ.get("OMP_WAIT_POLICY") == expected
        assert os.environ.get(LORA_THREADS_ENV) == lora_threads
    assert os.environ.get("OMP_WAIT_POLICY") == preset  # the server's own is left as it was
    assert LORA_THREADS_ENV not in os.environ


@pytest.mark.slow
def test_a_busy_engine_process_never_freezes_the_server(lora_suite):
    # While the engine process is in a step it reads no commands. Commands beyond the
    # pipe's buffer (64 KiB) used to block the server's event loop in the write until the
    # step ended, with no health check, no new call and no cancel answered meanwhile.
    # A stopped engine process is a step that never ends.
    worker = WorkerThread(worker_config(lora_suite[0], engine_runs="process"))
    pid = worker.running.worker.bridge.link.pid
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5] * 1000),
                                 sampling=pb.SamplingParams(max_tokens=1, temperature=0))
    os.kill(pid, signal.SIGSTOP)
    try:
        calls = [worker.inference.Generate(request, timeout=120) for _ in range(60)]
        time.sleep(1.0)  # the server turns them into commands: about 120 KB
        began = time.monotonic()
        _health(worker)  # answers, whatever it says
        assert time.monotonic() - began < 5
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        for call in calls:
            assert len([m for m in call if m.HasField("delta")]) == 1  # nothing was lost
    finally:
        worker.stop()


@pytest.mark.slow
def test_an_engine_process_that_never_finishes_building_is_stopped_at_the_timeout(
        lora_suite, tmp_path):
    # A weights file that blocks on open (a FIFO nobody writes; in life a hung network
    # mount) used to hold `lorafleet serve` at start for ever. Now start-up gives up
    # after --engine-start-timeout with one clear line, and the child is gone.
    from lorafleet.dataplane.server.process_link import ProcessLink
    from lorafleet.runtime.startup import StartupError

    base = tmp_path / "base"
    shutil.copytree(lora_suite[0], base)
    for weights in base.glob("*.safetensors"):
        weights.unlink()
        os.mkfifo(weights)
    config = worker_config(base, engine_runs="process", engine_start_timeout=3.0)
    started = time.monotonic()
    children_before = set(multiprocessing.active_children())
    with pytest.raises(StartupError, match="did not finish starting in 3 s"):
        ProcessLink(config)
    assert time.monotonic() - started < 30
    assert not set(multiprocessing.active_children()) - children_before


def test_engine_start_timeout_must_be_positive(lora_suite):
    with pytest.raises(ValueError, match="engine_start_timeout"):
        worker_config(lora_suite[0], engine_start_timeout=0)


def test_engine_threads_sleep_by_default_and_spin_when_asked():
    """Issue 22 #2: spinning by default made `serve` ~10x slower on a machine doing
    anything else; spinning is the setting for a worker with its cores to itself."""
    from lorafleet.dataplane.config.worker_config import WorkerConfig
    from lorafleet.dataplane.server.cli import serve_parser

    parser = serve_parser()
    assert parser.parse_args(["--model", "m"]).cpu_thread_wait == "sleep"
    spin = parser.parse_args(["--model", "m", "--cpu-thread-wait", "spin"])
    assert spin.cpu_thread_wait == "spin"
    assert WorkerConfig("m").cpu_thread_wait == "sleep"
