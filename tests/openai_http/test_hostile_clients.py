"""Hostile HTTP clients (issue 21 #7): what they send is refused with the right status,
costs one log line at most, and cannot hold a connection or a sequence for long."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from lorafleet.dataplane.openai_http import answers, api, limits
from lorafleet.dataplane.openai_http.limits import MAX_BODY_BYTES


async def _exchange(port: int, raw: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
    """Sends `raw` on a new connection and reads the whole answer (until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout) if read else b""
    finally:
        writer.close()


def _post(body: bytes, length: int | None = None) -> bytes:
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            f"Connection: close\r\n\r\n")
    return head.encode() + body


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000])
async def test_deeply_nested_json_is_400_with_no_traceback(scripted, body, caplog):
    assert len(body) < MAX_BODY_BYTES
    with caplog.at_level(logging.INFO):
        answer = await _exchange(scripted.http.port, _post(body))
    assert answer.startswith(b"HTTP/1.1 400")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_json"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_an_oversized_header_costs_one_line_and_no_traceback(scripted, caplog):
    raw = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    with caplog.at_level(logging.INFO):
        answer = await _exchange(scripted.http.port, raw)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    logged = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_body_announced_beyond_the_limit_is_413_at_once(scripted):
    answer = await _exchange(scripted.http.port, _post(b"", length=10**12), timeout=5.0)
    assert answer.startswith(b"HTTP/1.1 413")


async def test_a_body_that_never_arrives_is_408(scripted, monkeypatch):
    monkeypatch.setattr(api, "BODY_SECONDS", 0.5)
    answer = await _exchange(scripted.http.port, _post(b'{"mod', length=100), timeout=5.0)
    assert answer.startswith(b"HTTP/1.1 408")


async def test_a_client_that_stops_reading_loses_its_stream_and_sequence(scripted, monkeypatch):
    monkeypatch.setattr(answers, "STALL_SECONDS", 0.5)
    body = json.dumps({"model": "acme/x", "prompt": "flood", "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", scripted.http.port)
    writer.write(_post(body))
    await writer.drain()
    try:  # never reads: the server's buffers fill, then it cuts the stream and the call
        await asyncio.wait_for(scripted.inference.cancelled.wait(), 15)
    finally:
        writer.close()


async def _is_closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except asyncio.TimeoutError:
        return False


@pytest.fixture
def short_head(monkeypatch):
    """A 1 s head deadline (asked for before `scripted`, so its server is built with it)."""
    monkeypatch.setattr(limits, "HEAD_SECONDS", 1.0)


async def test_a_client_trickling_header_lines_is_cut_off(short_head, scripted):
    """The slowloris attack: 20 connections each send a header line every 0.2 s and never
    end the head. The server closes every one at the head deadline instead of holding
    them open; a well-behaved client is served meanwhile."""
    connections = [await asyncio.open_connection("127.0.0.1", scripted.http.port)
                   for _ in range(20)]

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):
            await asyncio.sleep(0.2)
            if writer.is_closing():
                return
            writer.write(f"X-Trickle-{i}: y\r\n".encode())

    trickles = [asyncio.create_task(trickle(w)) for _, w in connections]
    try:
        answer = await _exchange(scripted.http.port,
                                 b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 ")
        closed = await asyncio.gather(*(_is_closed_within(r, 4.0) for r, _ in connections))
        assert all(closed), closed
    finally:
        for task in trickles:
            task.cancel()
        for _, writer in connections:
            writer.close()


async def test_an_idle_kept_alive_connection_is_closed(short_head, scripted):
    """After an answer, a kept-alive connection that sends nothing more is closed at the
    head deadline (a connection held open costs the server as much as a trickle)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", scripted.http.port)
    try:
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 ")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        assert await _is_closed_within(reader, 4.0)
    finally:
        writer.close()
