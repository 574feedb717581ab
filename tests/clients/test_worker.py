"""Client and AsyncClient against a real worker (tiny random Llama, one PEFT adapter)."""

from __future__ import annotations

import json

import grpc
import pytest

from lorafleet.clients import cli
from lorafleet.clients.aio import AsyncClient
from lorafleet.clients.client import Client
from lorafleet.clients.errors import DeadlineExceeded, InvalidArgument, NotFound
from lorafleet.clients.events import FinishReason, Summary, TokenEvent
from tests.clients.conftest import ADAPTER

PROMPT = "the quick brown fox"
GREEDY = dict(adapter=ADAPTER, max_tokens=8, temperature=0.0)


def test_generate_is_the_stream_gathered_and_names_the_version(worker):
    with Client(worker.address) as client:
        events = list(client.generate_stream(PROMPT, **GREEDY))
        completion = client.generate(PROMPT, **GREEDY)
    *tokens, summary = events
    assert tokens and all(isinstance(event, TokenEvent) for event in tokens)
    assert completion.text == "".join(event.text for event in tokens)
    assert completion.token_ids == tuple(t for event in tokens for t in event.token_ids)
    assert isinstance(summary, Summary) and completion.summary.adapter_version == "acme/support@1"
    assert summary.adapter_version == "acme/support@1" and len(summary.adapter_digest) == 64
    assert summary.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert summary.num_completion_tokens == len(completion.token_ids) <= 8
    assert summary.worker_id == "test-worker" and summary.time_to_first_token > 0


async def test_async_generate_matches_the_sync_client(worker):
    with Client(worker.address) as client:
        expected = client.generate(PROMPT, **GREEDY)
    async with AsyncClient(worker.address) as client:
        events = [event async for event in client.generate_stream(PROMPT, **GREEDY)]
        completion = await client.generate(PROMPT, **GREEDY, request_id="async-1")
    assert (completion.text, completion.token_ids) == (expected.text, expected.token_ids)
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == expected.text
    assert completion.summary.adapter_version == "acme/support@1"
    assert completion.summary.request_id == "async-1"


async def test_unknown_adapter_is_not_found(worker):
    with Client(worker.address) as client, pytest.raises(NotFound) as raised:
        client.generate(PROMPT, adapter="acme/missing")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND and "acme/missing" in raised.value.message
    async with AsyncClient(worker.address) as client:
        with pytest.raises(NotFound):
            await client.generate(PROMPT, adapter="acme/missing")


def test_a_deadline_too_short_is_deadline_exceeded(worker):
    with Client(worker.address) as client, pytest.raises(DeadlineExceeded) as raised:
        client.generate(PROMPT, adapter=ADAPTER, max_tokens=200, ignore_eos=True, timeout=0.005)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_worker_admin_calls(worker, adapter_dir):
    _, adapter_path = adapter_dir
    with Client(worker.address) as client:
        assert client.get_worker_status().worker_id == "test-worker"
        resident = client.list_worker_adapters(tier="device").adapters
        verdict = client.validate_adapter(str(adapter_path))
        served = client.generate(PROMPT, **GREEDY).summary
        with pytest.raises(InvalidArgument, match="source_uri"):
            client.validate_adapter("")
    assert [(r.adapter, r.version) for r in resident] == [(ADAPTER, 1)]
    assert verdict.is_valid and verdict.digest == served.adapter_digest == resident[0].digest


def test_generate_command_prints_the_text_and_a_summary(worker, capsys):
    with Client(worker.address) as client:
        expected = client.generate(PROMPT, **GREEDY)
    argv = ["generate", PROMPT, "--addr", worker.address, "--adapter", ADAPTER,
            "--max-tokens", "8"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == expected.text
    assert "adapter acme/support@1" in err and "worker test-worker" in err
    assert cli.main([*argv, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "delta" in lines[0] and lines[-1]["summary"]["adapterVersion"] == "acme/support@1"
    assert cli.main(["generate", PROMPT, "--addr", worker.address, "--adapter", "acme/nope"]) == 1
    assert "error: NOT_FOUND: " in capsys.readouterr().err
