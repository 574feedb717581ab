"""A live worker's OpenAI-compatible HTTP, called with the official `openai` package.

Greedy HTTP answers must equal the worker's own gRPC Generate for the same prompt and
adapter, token counts included.
"""

from __future__ import annotations

import time

import openai
import pytest

from lorafleet.inference.v1 import inference_service_pb2 as pb
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.server.conftest import worker_config
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint
from tests.support.worker_thread import WorkerThread

BASE = "base"  # the checkpoint directory's name, which the worker reports
PROMPT = "The quick brown fox"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny base model and two adapters for it."""
    root = tmp_path_factory.mktemp("openai-worker")
    base = make_checkpoint(root / BASE, "llama-gqa")
    adapters = [make_adapter(base, root / f"adapter{i}", r=8, alpha=16,
                             target_modules=["q_proj", "v_proj"], seed=i) for i in (1, 2)]
    return base, adapters


@pytest.fixture(scope="module")
def worker(checkpoint):
    """A worker with acme/support@1 (the default) and acme/support@2, HTTP on a free port."""
    base, adapters = checkpoint
    served = WorkerThread(worker_config(base), adapters=[("acme/support", str(adapters[0]))],
                          http_port=0)
    served.admin.LoadAdapter(wpb.LoadAdapterRequest(adapter="acme/support", version=2,
                                                    source_uri=str(adapters[1])))
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(worker):
    """The OpenAI SDK pointed at the worker (no retries: a test sees every status)."""
    with openai.OpenAI(base_url=f"http://127.0.0.1:{worker.running.http.port}/v1",
                       api_key="unused", max_retries=0, timeout=60) as sdk:
        yield sdk


def _grpc(worker, adapter: str, *, max_tokens: int, text=None, chat=None):
    """(text, summary) from the worker's gRPC Generate, greedy."""
    request = pb.GenerateRequest(adapter=adapter, sampling=pb.SamplingParams(
        max_tokens=max_tokens, temperature=0))
    if text is not None:
        request.text = text
    else:
        request.chat.messages.extend(pb.ChatMessage(**m) for m in chat)
    parts, summary = [], None
    for message in worker.inference.Generate(request, timeout=60):
        if message.HasField("delta"):
            parts.append(message.delta.text)
        else:
            summary = message.summary
    return "".join(parts), summary


@pytest.mark.parametrize("model", [BASE, "acme/support", "acme/support@2"])
def test_greedy_completion_equals_grpc_generate(worker, client, model):
    adapter = "" if model == BASE else model
    want, summary = _grpc(worker, adapter, max_tokens=12, text=PROMPT)
    completion = client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                           temperature=0)
    assert completion.choices[0].text == want
    assert completion.model == model
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        summary.usage.prompt_tokens, summary.usage.completion_tokens)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.choices[0].finish_reason == (
        "length" if summary.finish_reason == pb.FINISH_REASON_LENGTH else "stop")


def test_streaming_completion_joins_to_the_same_text_with_usage(worker, client):
    want, summary = _grpc(worker, "acme/support", max_tokens=12, text=PROMPT)
    chunks = list(client.completions.create(
        model="acme/support", prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == summary.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == summary.usage.prompt_tokens
    assert chunks[-2].model_extra["lorafleet"]["adapter_version"] == "acme/support@1"


@pytest.mark.parametrize("is_stream", [False, True])
def test_greedy_chat_equals_grpc_generate(worker, client, is_stream):
    want, summary = _grpc(worker, "acme/support@2", max_tokens=10, chat=CHAT)
    answer = client.chat.completions.create(model="acme/support@2", messages=CHAT,
                                            max_completion_tokens=10, temperature=0,
                                            stream=is_stream)
    if is_stream:
        text = "".join(c.choices[0].delta.content or "" for c in answer)
    else:
        text = answer.choices[0].message.content
        assert answer.usage.prompt_tokens == summary.usage.prompt_tokens
    assert text == want


def test_served_version_and_worker_in_headers(client):
    raw = client.completions.with_raw_response.create(model="acme/support", prompt=PROMPT,
                                                      max_tokens=2)
    assert raw.headers["x-lorafleet-adapter-version"] == "acme/support@1"
    assert raw.headers["x-lorafleet-worker"] == "test-worker"
    base = client.completions.with_raw_response.create(model=BASE, prompt=PROMPT, max_tokens=2)
    assert "x-lorafleet-adapter-version" not in base.headers


def test_stop_string_ends_early_with_stop(worker, client):
    full, _ = _grpc(worker, "", max_tokens=12, text=PROMPT)
    stop = full.strip()[len(full.strip()) // 2:][:3]
    assert stop, full
    completion = client.completions.create(model=BASE, prompt=PROMPT, max_tokens=12,
                                           temperature=0, stop=[stop])
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].text == full[:full.index(stop)]


def test_logprobs_one_per_generated_token(client):
    completion = client.completions.create(model="acme/support", prompt=PROMPT, max_tokens=5,
                                           temperature=0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == completion.usage.completion_tokens
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(len(top) == 2 for top in logprobs.top_logprobs)


def test_models_lists_base_and_adapters_with_parent(client):
    listed = {m.id: m.model_extra["parent"] for m in client.models.list()}
    assert listed == {BASE: None, "acme/support": BASE, "acme/support@1": BASE,
                      "acme/support@2": BASE}


def test_unknown_adapter_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="acme/nothing", prompt=PROMPT)
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="acme/support@9", messages=CHAT, stream=True)


@pytest.mark.parametrize(("change", "param"), [
    ({"n": 2}, "n"), ({"temperature": "hot"}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 5000}, "max_tokens"), ({"prompt": [1, 2, 10**6]}, "prompt")])
def test_bad_fields_are_400_naming_the_field(client, change, param):
    body = {"model": "acme/support", "prompt": PROMPT, **change}
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**body)
    assert info.value.body["param"] == param, info.value.body


def test_full_queue_is_429_and_a_disconnect_frees_the_worker(checkpoint):
    base, _ = checkpoint
    small = WorkerThread(worker_config(base, max_num_seqs=1, max_waiting=0), http_port=0)
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{small.running.http.port}/v1",
                           api_key="unused", max_retries=0) as sdk:
            stream = sdk.completions.create(model=BASE, prompt=PROMPT, max_tokens=900,
                                            stream=True, extra_body={"ignore_eos": True})
            next(iter(stream))
            with pytest.raises(openai.RateLimitError):
                sdk.completions.create(model=BASE, prompt=PROMPT, max_tokens=2)
            stream.close()
            _wait_until_idle(small)
            assert sdk.completions.create(model=BASE, prompt=PROMPT, max_tokens=2).usage
        registry = small.running.worker.metrics.registry
        assert _sum(registry, "lorafleet_requests_total", finish_reason="cancelled") == 1
        # The disconnect cancelled the sequence long before its 900 tokens.
        assert _sum(registry, "lorafleet_generation_tokens_total") < 900
    finally:
        small.stop()


def _sum(registry, name: str, **labels) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels`."""
    return sum(sample.value for metric in registry.collect() for sample in metric.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def _wait_until_idle(worker, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.status().load.num_running or worker.status().load.num_waiting:
        assert time.monotonic() < deadline, worker.status().load
        time.sleep(0.05)
