"""Generate over real gRPC: concurrency, cancellation, deadlines and bad requests.

Greedy float32 outputs must equal peft on transformers, token for token.
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from lorafleet.dataplane.engine.outputs import ErrorKind, RequestOutput, Usage
from lorafleet.dataplane.engine.request import FinishReason, RequestTimings
from lorafleet.dataplane.server.worker import engine_failure
from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.runtime.error_status import status_of
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.support.lora_suite import NUM_NEW_TOKENS, prompts


def _wait_idle(worker, timeout=10.0):
    """Waits until no KV block and no adapter pin is held; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = worker.status()
        listed = worker.admin.ListAdapters(wpb.ListAdaptersRequest()).adapters
        pins = sum(a.num_pinned_requests for a in listed)
        if status.load.num_kv_blocks_used == 0 and pins == 0 and status.load.num_running == 0:
            return status
        assert time.monotonic() < deadline, f"still busy: {status.load} pins={pins}"
        time.sleep(0.02)


def test_32_concurrent_streams_over_8_adapters_and_base_match_peft(
        served, lora_suite, peft_reference):
    names = [*lora_suite[1], ""]
    jobs = [(names[i % len(names)], prompt) for i, prompt in enumerate(prompts(32))]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda job: served.generate(job[0], job[1],
                                                            max_tokens=NUM_NEW_TOKENS), jobs))
    for (name, prompt), (tokens, summary) in zip(jobs, results, strict=True):
        assert tokens == peft_reference.greedy(name or None, prompt), name
        assert summary.adapter_version == (f"{name}@1" if name else "")
        assert summary.usage.completion_tokens == len(tokens)
    _wait_idle(served)


def test_cancel_mid_stream_frees_kv_and_pins(served):
    request = pb.GenerateRequest(adapter="acme/all16", token_ids=pb.TokenIds(ids=prompts(1)[0]),
                                 sampling=pb.SamplingParams(max_tokens=400, temperature=0,
                                                            ignore_eos=True))
    call = served.inference.Generate(request, timeout=60)
    first = next(call)
    assert first.HasField("delta")
    assert served.status().load.num_kv_blocks_used > 0
    call.cancel()
    _wait_idle(served)


def test_deadline_exceeded_aborts_the_sequence(served):
    request = pb.GenerateRequest(adapter="acme/qv8", token_ids=pb.TokenIds(ids=prompts(2)[1]),
                                 sampling=pb.SamplingParams(max_tokens=900, temperature=0,
                                                            ignore_eos=True))
    with pytest.raises(grpc.RpcError) as info:
        list(served.inference.Generate(request, timeout=0.3))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_idle(served)


BAD_REQUESTS = [
    ("no prompt", dict(), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    ("empty text", dict(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text"),
    ("empty token ids", dict(token_ids=pb.TokenIds()), grpc.StatusCode.INVALID_ARGUMENT, "token_ids"),
    ("negative temperature", dict(text="hi", sampling=pb.SamplingParams(temperature=-0.5)),
     grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("top_p zero", dict(text="hi", sampling=pb.SamplingParams(top_p=0.0)),
     grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ("top_p above one", dict(text="hi", sampling=pb.SamplingParams(top_p=1.5)),
     grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ("too many stop strings", dict(text="hi", sampling=pb.SamplingParams(stop=["x"] * 17)),
     grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    ("stop string too long", dict(text="hi", sampling=pb.SamplingParams(stop=["x" * 300])),
     grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    ("max_tokens beyond context", dict(text="hi", sampling=pb.SamplingParams(max_tokens=5000)),
     grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("prompt longer than context", dict(token_ids=pb.TokenIds(ids=[5] * 1100)),
     grpc.StatusCode.INVALID_ARGUMENT, "context"),
    ("token id outside vocabulary", dict(token_ids=pb.TokenIds(ids=[5, 99999])),
     grpc.StatusCode.INVALID_ARGUMENT, "outside"),
    ("malformed adapter", dict(adapter="NoTenant", text="hi"),
     grpc.StatusCode.INVALID_ARGUMENT, "tenant/name"),
    ("unknown adapter", dict(adapter="acme/nope", text="hi"), grpc.StatusCode.NOT_FOUND, "acme/nope"),
    ("unknown version", dict(adapter="acme/qv8@7", text="hi"), grpc.StatusCode.NOT_FOUND, "@7"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_the_server_keeps_serving(served, case):
    _, fields, code, needle = case
    with pytest.raises(grpc.RpcError) as info:
        list(served.inference.Generate(pb.GenerateRequest(**fields), timeout=30))
    assert info.value.code() == code
    assert needle in info.value.details()
    tokens, summary = served.generate("acme/qv8", prompts(1)[0], max_tokens=3)
    assert len(tokens) == 3 and summary.finish_reason == pb.FINISH_REASON_LENGTH


def test_text_prompt_stop_string_and_logprobs(served):
    tokens, summary = served.generate("", "Hello world", max_tokens=6)
    assert summary.usage.prompt_tokens > 0 and len(tokens) == summary.usage.completion_tokens
    request = pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(
        max_tokens=4, temperature=0, logprobs=2))
    deltas = [m.delta for m in served.inference.Generate(request, timeout=30) if m.HasField("delta")]
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert len(logprobs) == sum(len(d.token_ids) for d in deltas)
    assert all(len(lp.top) == 2 and lp.logprob <= 0 for lp in logprobs)


def test_stop_string_ends_the_stream_with_the_tokens_and_usage_up_to_it(served):
    """The frontend matches stop strings; the summary counts the tokens up to the one
    that completed the stop string, exactly the tokens streamed."""
    def run(stop):
        request = pb.GenerateRequest(text="Hello world", sampling=pb.SamplingParams(
            max_tokens=16, temperature=0, ignore_eos=True, stop=stop))
        messages = list(served.inference.Generate(request, timeout=30))
        deltas = [m.delta for m in messages if m.HasField("delta")]
        return ("".join(d.text for d in deltas), [t for d in deltas for t in d.token_ids],
                messages[-1].summary)

    full, full_tokens, _ = run([])
    # Two plain characters past the start, at their first occurrence.
    stop = next(full[i:i + 2] for i in range(1, len(full) - 1)
                if full[i:i + 2].isascii() and full[i:i + 2].isprintable()
                and full.index(full[i:i + 2]) == i)
    text, tokens, summary = run([stop])
    assert text == full[:full.index(stop)] and summary.matched_stop == stop
    assert summary.finish_reason == pb.FINISH_REASON_STOP
    assert tokens == full_tokens[:len(tokens)] and len(tokens) < len(full_tokens)
    assert summary.usage.completion_tokens == len(tokens)


def test_a_request_the_engine_refuses_reaches_its_caller_as_invalid_argument():
    """Adding is one-way: the engine's refusal is the request's final output, which the
    worker raises in its place, with the reason."""
    refusal = RequestOutput("r", (), None, FinishReason.ERROR, Usage(3, 0),
                            RequestTimings(arrival=0.0), error="prompt: the prompt is empty",
                            error_kind=ErrorKind.INVALID_REQUEST)
    error = engine_failure(refusal, None)
    assert status_of(error)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == "prompt: the prompt is empty"
