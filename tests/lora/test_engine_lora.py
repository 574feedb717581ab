"""Mixed-adapter batches in the engine, token for token against peft on transformers.

Float32 throughout: greedy tokens must equal the reference exactly.
"""

from __future__ import annotations

import time

import pytest

from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.engine.outputs import ErrorKind
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.engine.request import FinishReason
from lorafleet.dataplane.engine_process.build import build_engine
from lorafleet.dataplane.engine_process.messages import AdapterSource
from lorafleet.dataplane.server.metrics import WorkerMetrics
from lorafleet.kernels.cpu import lora as cpu_lora
from tests.support.lora_suite import NUM_NEW_TOKENS, prompts

GREEDY = SamplingParams(max_tokens=NUM_NEW_TOKENS, temperature=0.0)


def _engine(base, adapters, recorder=None, **limits):
    """A worker's engine (the public builder's parts) with every adapter registered at
    its source."""
    config = WorkerConfig(base, device="cpu", dtype="float32", kv_cache_bytes=8 << 20,
                          block_size=4, worker_id="test", **limits)
    parts = build_engine(config, recorder)
    digests = {}
    for name, path in adapters.items():
        digest = parts.files.validate(str(path)).digest
        parts.host.add_source(AdapterSource(f"{name}@1", str(path), digest))
        digests[name] = digest
    return parts, digests


def _run(engine, requests, *, on_step=None, timeout=120.0, finals=None):
    """Submits (request_id, adapter digest or None, prompt) all at once; steps to the end.
    Requests added by the caller beforehand may end with an error; their last outputs go
    to `finals` (a dict) when given."""
    planned = {request_id for request_id, _, _ in requests}
    for request_id, digest, prompt in requests:
        engine.add_request(request_id, prompt, params=GREEDY, adapter=digest)
    tokens = {request_id: [] for request_id, _, _ in requests}
    deadline = time.monotonic() + timeout
    while engine.has_unfinished():
        assert time.monotonic() < deadline, "engine made no progress"
        outputs = engine.step()
        for out in outputs:
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.is_finished and finals is not None:
                finals[out.request_id] = out
            assert out.error is None or out.request_id not in planned, out.error
        if on_step is not None:
            on_step(engine)
        if not outputs:
            time.sleep(0.002)  # only background adapter loads are under way
    return tokens


def _requests(adapter_names, digests, num_requests):
    names = [adapter_names[i % len(adapter_names)] for i in range(num_requests)]
    return [(f"r{i}", digests.get(name), prompt, name)
            for i, (name, prompt) in enumerate(zip(names, prompts(num_requests), strict=True))]


@pytest.mark.parametrize("path", ["cost model", "grouped", "blocked"])
def test_sixteen_requests_over_eight_adapters_and_base_match_peft(lora_suite, peft_reference,
                                                                  path, monkeypatch):
    # Both CPU LoRA paths, and the cost model's mix of them, match PEFT token for token.
    if path != "cost model":
        monkeypatch.setattr(cpu_lora, "prefers_slot_blocks",
                            lambda batch, buffers: path == "blocked")
    base, adapters = lora_suite
    parts, digests = _engine(base, adapters, max_loras=8, max_cpu_loras=8)
    names = list(adapters) + [None]
    planned = _requests(names, digests, 20)  # 16 adapter requests + 4 base in the same batches
    tokens = _run(parts.engine, [(rid, digest, prompt) for rid, digest, prompt, _ in planned])
    for rid, _, prompt, name in planned:
        assert tokens[rid] == peft_reference.greedy(name, prompt), f"{rid} on {name}"
    parts.close()


def test_adapters_change_outputs(lora_suite, peft_reference):
    """The suite is meaningful: every adapter changes the base model's greedy tokens."""
    base, adapters = lora_suite
    prompt = prompts(1)[0]
    base_tokens = peft_reference.greedy(None, prompt)
    changed = [name for name in adapters if peft_reference.greedy(name, prompt) != base_tokens]
    assert len(changed) >= 6


@pytest.mark.parametrize("max_loras,max_cpu_loras", [(2, 3)])
def test_churn_keeps_outputs_and_never_evicts_a_running_adapter(
        lora_suite, peft_reference, max_loras, max_cpu_loras):
    base, adapters = lora_suite
    parts, digests = _engine(base, adapters, max_loras=max_loras, max_cpu_loras=max_cpu_loras)
    engine, bank = parts.engine, parts.adapters.bank
    violations, writes = [], []
    bank_write = bank.write

    def checked_write(slot, adapter):
        on_device = engine.scheduler.adapter_residency()[0]
        for request in engine.scheduler.running:
            key = request.adapter
            if key is not None and key != adapter.digest and key not in on_device:
                violations.append((request.request_id, slot))
        writes.append(slot)
        bank_write(slot, adapter)

    bank.write = checked_write
    planned = _requests(list(adapters) + [None], digests, 18)
    tokens = _run(engine, [(rid, digest, prompt) for rid, digest, prompt, _ in planned])
    assert violations == []
    # Eight adapters went through two slots (and a host tier of three).
    assert len(writes) >= len(adapters) and set(writes) == {0, 1}
    assert engine.snapshot().adapter_counts["device"] <= max_loras
    for rid, _, prompt, name in planned:
        assert tokens[rid] == peft_reference.greedy(name, prompt), f"{rid} on {name}"
    parts.close()


def test_adapters_with_waiting_requests_are_read_from_source_once(lora_suite, peft_reference):
    """A host tier smaller than the adapters with waiting requests keeps them all, instead
    of dropping and re-reading them from the source while their requests wait."""
    base, adapters = lora_suite
    metrics = WorkerMetrics("test")
    parts, digests = _engine(base, adapters, metrics, max_loras=2, max_cpu_loras=1)
    planned = _requests(list(adapters), digests, 16)
    tokens = _run(parts.engine, [(rid, digest, prompt) for rid, digest, prompt, _ in planned])
    for rid, _, prompt, name in planned:
        assert tokens[rid] == peft_reference.greedy(name, prompt), f"{rid} on {name}"
    loads = metrics.registry.get_sample_value(
        "lorafleet_adapter_loads_total", {"tier": "host", "outcome": "ok"})
    assert loads == len(adapters)
    metrics.close()
    parts.close()


def test_unloadable_adapter_fails_its_requests_and_others_finish(lora_suite, tmp_path):
    base, adapters = lora_suite
    parts, digests = _engine(base, {"acme/qv8": adapters["acme/qv8"]}, max_loras=2)
    parts.host.add_source(AdapterSource("acme/gone@1", str(tmp_path / "missing"), "f" * 64))
    engine = parts.engine
    engine.add_request("bad", prompts(1)[0], params=GREEDY, adapter="f" * 64)
    finals = {}
    tokens = _run(engine, [("good", digests["acme/qv8"], prompts(2)[1])], finals=finals)
    assert len(tokens["good"]) == NUM_NEW_TOKENS
    assert finals["bad"].finish_reason is FinishReason.ERROR
    assert finals["bad"].error_kind is ErrorKind.ADAPTER_LOAD_FAILED
    assert "not found or not readable" in finals["bad"].error
    assert engine.allocator.num_used_blocks == 0
    parts.close()


def test_evicting_a_running_adapter_happens_when_its_last_request_ends(lora_suite):
    """No polling: the engine empties the slot itself once the adapter stops running."""
    base, adapters = lora_suite
    parts, digests = _engine(base, {"acme/qv8": adapters["acme/qv8"]}, max_loras=2)
    engine, digest = parts.engine, digests["acme/qv8"]
    engine.add_request("a", prompts(1)[0], params=GREEDY, adapter=digest)
    deadline = time.monotonic() + 60
    while not any(out.new_token_ids for out in engine.step()):
        assert time.monotonic() < deadline, "the adapter never ran"
        time.sleep(0.002)
    assert engine.evict_adapter(digest) is False  # running: deferred
    assert engine.snapshot().tier_of(digest) == "device" and engine.take_evicted() == []
    while engine.has_unfinished():
        engine.step()
    assert engine.take_evicted() == [digest]
    assert engine.snapshot().tier_of(digest) == "host"
    assert engine.evict_adapter(digest) is True and engine.take_evicted() == []
    parts.close()
