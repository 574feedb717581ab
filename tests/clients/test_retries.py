"""Retries, API key metadata and TLS, against scripted servers on loopback."""

from __future__ import annotations

import pathlib

import grpc
import pytest

from lorafleet.clients import cli
from lorafleet.clients.aio import AsyncClient
from lorafleet.clients.client import Client
from lorafleet.clients.errors import ResourceExhausted, Unavailable
from lorafleet.clients.events import TokenEvent
from lorafleet.clients.retry import RetryPolicy
from tests.clients.fakes import RecordingWorkerService, ScriptedInference, serving

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
TLS_DIR = pathlib.Path(__file__).parent / "tls"


def test_unavailable_before_the_first_token_is_retried():
    fake = ScriptedInference(num_failures=2)
    with serving(fake) as port, Client(f"127.0.0.1:{port}", retry=FAST_RETRY) as client:
        completion = client.generate("hi")
    assert completion.text == "hello world" and completion.token_ids == (5, 6)
    assert fake.num_calls == 3


def test_retries_end_after_max_attempts_with_the_last_status():
    fake = ScriptedInference(num_failures=5)
    with (serving(fake) as port, Client(f"127.0.0.1:{port}", retry=FAST_RETRY) as client,
          pytest.raises(Unavailable) as raised):
        client.generate("hi")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.message == "attempt 3 refused"
    assert fake.num_calls == 3


def test_other_status_codes_are_not_retried():
    fake = ScriptedInference(num_failures=1, failure_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with (serving(fake) as port, Client(f"127.0.0.1:{port}", retry=FAST_RETRY) as client,
          pytest.raises(ResourceExhausted)):
        client.generate("hi")
    assert fake.num_calls == 1


def test_a_stream_that_yielded_a_token_is_never_replayed():
    fake = ScriptedInference(is_broken_after_first_delta=True)
    received = []
    with (serving(fake) as port, Client(f"127.0.0.1:{port}", retry=FAST_RETRY) as client,
          pytest.raises(Unavailable, match="the worker went away")):
        for event in client.generate_stream("hi"):
            received.append(event)
    assert received == [TokenEvent((5,), "hello")]
    assert fake.num_calls == 1


async def test_async_retries_before_the_first_token_only():
    flaky = ScriptedInference(num_failures=2)
    broken = ScriptedInference(is_broken_after_first_delta=True)
    with serving(flaky) as flaky_port, serving(broken) as broken_port:
        async with AsyncClient(f"127.0.0.1:{flaky_port}", retry=FAST_RETRY) as client:
            completion = await client.generate("hi")
        received = []
        async with AsyncClient(f"127.0.0.1:{broken_port}", retry=FAST_RETRY) as client:
            with pytest.raises(Unavailable):
                async for event in client.generate_stream("hi"):
                    received.append(event)
    assert completion.text == "hello world" and flaky.num_calls == 3
    assert received == [TokenEvent((5,), "hello")] and broken.num_calls == 1


def test_api_key_is_sent_as_bearer_metadata_on_every_call():
    inference, worker = ScriptedInference(), RecordingWorkerService()
    with serving(inference, worker) as port:
        with Client(f"127.0.0.1:{port}", api_key="key-123") as client:
            client.generate("hi")
            assert client.get_worker_status().worker_id == "fake"
        with Client(f"127.0.0.1:{port}") as client:
            client.generate("hi")
    assert inference.metadata[0]["authorization"] == "Bearer key-123"
    assert worker.metadata[0]["authorization"] == "Bearer key-123"
    assert "authorization" not in inference.metadata[1]


async def test_async_api_key_metadata():
    inference, worker = ScriptedInference(), RecordingWorkerService()
    with serving(inference, worker) as port:
        async with AsyncClient(f"127.0.0.1:{port}", api_key="key-9") as client:
            await client.generate("hi")
            await client.get_worker_status()
    assert inference.metadata[0]["authorization"] == "Bearer key-9"
    assert worker.metadata[0]["authorization"] == "Bearer key-9"


def test_generate_command_sends_the_api_key_from_env_or_flag(monkeypatch, capsys):
    inference = ScriptedInference()
    monkeypatch.setenv("LORAFLEET_API_KEY", "from-env")
    with serving(inference) as port:
        addr = f"127.0.0.1:{port}"
        assert cli.main(["generate", "hi", "--addr", addr]) == 0
        assert cli.main(["generate", "hi", "--addr", addr, "--api-key", "from-flag"]) == 0
    out = capsys.readouterr().out
    assert out == "hello world" * 2
    assert [m["authorization"] for m in inference.metadata] == ["Bearer from-env",
                                                                "Bearer from-flag"]


def test_tls_channel_trusts_the_given_root_certificate():
    key, certificate = (TLS_DIR / "server.key").read_bytes(), (TLS_DIR / "server.crt").read_bytes()
    with serving(tls=(key, certificate)) as port:
        with Client(f"localhost:{port}", root_certificates=certificate) as client:
            assert client.generate("hi").text == "hello world"
        # The system roots do not trust a self-signed certificate: the channel is refused.
        with Client(f"localhost:{port}", tls=True, retry=RetryPolicy(max_attempts=1),
                    timeout=10) as client, pytest.raises(Unavailable):
            client.generate("hi")
