"""The admin commands (`lorafleet adapter|workers|placement`) against a live control plane."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from lorafleet.clients import cli
from lorafleet.clients.admin import parse_weights
from lorafleet.worker.v1 import worker_service_pb2 as worker_pb
from tests.controlplane.conftest import eventually
from tests.support.fake_worker import fake_digest


async def _run(capsys, *argv) -> tuple[int, str, str]:
    status = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def test_adapter_lifecycle_from_the_command_line(plane, make_worker, capsys):
    addr = ("--controlplane", f"127.0.0.1:{plane.port}")
    worker = await make_worker("w1")
    worker.invalid_sources["/bad"] = ["rank 99 exceeds max_lora_rank 16"]
    status, out, _ = await _run(capsys, "adapter", "create", "acme/support", "--base-model",
                                "tiny-llama", "--min-replicas", "1", *addr)
    assert status == 0 and "acme/support" in out and "tiny-llama" in out
    await eventually(lambda: _workers_listed(capsys, addr))
    status, out, _ = await _run(capsys, "adapter", "version", "acme/support", "/v1", *addr)
    assert status == 0 and "READY" in out and fake_digest("/v1")[:12] in out
    # Issue 22 #4: a refused version exited 0; a command that did not do what was asked
    # exits non-zero with the reason.
    status, out, err = await _run(capsys, "adapter", "version", "acme/support", "/bad", *addr)
    assert status == 1 and "REJECTED" in out and "rank 99 exceeds max_lora_rank 16" in err
    status, out, err = await _run(capsys, "adapter", "version", "acme/support", "/v1", *addr)
    assert status == 0 and "the same weights as @1" in err
    status, out, _ = await _run(capsys, "adapter", "rollout", "acme/support", "1=100", *addr)
    assert status == 0 and "generation 1" in out and "100%" in out
    status, out, err = await _run(capsys, "adapter", "rollout", "acme/support", "2=5", *addr)
    assert status == 1 and "FAILED_PRECONDITION" in err and "REJECTED" in err
    status, out, _ = await _run(capsys, "adapter", "get", "acme/support", "--json", *addr)
    got = json.loads(out)
    assert got["adapter"]["name"] == "acme/support"
    assert [v["state"] for v in got["versions"]] == ["VERSION_STATE_READY",
                                                     "VERSION_STATE_REJECTED",
                                                     "VERSION_STATE_READY"]
    status, _, err = await _run(capsys, "adapter", "delete", "acme/support", *addr)
    assert status == 1 and "FAILED_PRECONDITION" in err


async def test_workers_and_placement_tables(plane, make_worker, capsys):
    addr = ("--controlplane", f"127.0.0.1:{plane.port}")
    worker = await make_worker("w1")
    await _run(capsys, "adapter", "create", "acme/a", "--base-model", "tiny-llama", *addr)
    await eventually(lambda: _workers_listed(capsys, addr))
    await _run(capsys, "adapter", "version", "acme/a", "/a1", *addr)
    await _run(capsys, "adapter", "rollout", "acme/a", "1=1", *addr)
    await eventually(lambda: ("acme/a", 1) in worker.resident())

    async def resident_in_table():
        _, out, _ = await _run(capsys, "placement", *addr)
        lines = out.splitlines()
        return lines[0].split() == ["ADAPTER", "VERSION", "DIGEST", "DESIRED", "RESIDENT",
                                    "FAILURES"] and lines[1].split()[3:5] == ["w1", "w1"]

    await eventually(resident_in_table)

    # Issue 22 #8: a version promoted to a device slot (as a real worker does) is still in
    # host memory, but HOST showed 0.
    worker.residency[("acme/a", 1)].tier = worker_pb.TIER_DEVICE

    async def counted_in_host_memory():
        _, out, _ = await _run(capsys, "workers", *addr)
        header, row = out.splitlines()[:2]
        columns = {name: row[header.index(name):].split()[0] for name in ("DEVICE", "HOST")}
        return columns == {"DEVICE": "1/2", "HOST": "1/8"}

    await eventually(counted_in_host_memory)
    status, out, _ = await _run(capsys, "workers", "--json", *addr)
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert listed["worker_id"] == "w1" and listed["address"] == worker.address
    status, out, _ = await _run(capsys, "workers", "--drain", "w1", *addr)
    assert status == 0 and "draining" in out
    status, _, err = await _run(capsys, "workers", "--drain", "nobody", *addr)
    assert status == 1 and "NOT_FOUND" in err


def test_parse_weights_names_a_bad_pair():
    assert [(w.version, w.weight) for w in parse_weights(["1=90", "2=10"])] == [(1, 90), (2, 10)]
    for bad in ("1:90", "x=1", "1=-3"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_weights([bad])


async def _workers_listed(capsys, addr) -> bool:
    status, out, _ = await _run(capsys, "workers", *addr)
    return status == 0 and "w1" in out
