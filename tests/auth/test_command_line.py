"""Auth on the command line: servers refuse to start without a key configuration unless
told --insecure-no-auth (and then say so loudly); `lorafleet key` and `lorafleet audit`."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys

import pytest

from lorafleet.clients.audit import since_of
from lorafleet.clients.cli import main as lorafleet
from lorafleet.runtime.auth import KeyRecord

LORAFLEET = [sys.executable, "-m", "lorafleet.clients.cli"]
NOWHERE = "127.0.0.1:9"


@pytest.mark.parametrize("argv", [
    ["controlplane", "--etcd", f"http://{NOWHERE}", "--port", "0"],
    ["gateway", "--controlplane", NOWHERE, "--port", "0"],
    ["serve", "--model", "/nonexistent-model", "--port", "0"],
    ["worker", "--model", "/nonexistent-model", "--controlplane", NOWHERE, "--port", "0"],
], ids=["controlplane", "gateway", "serve", "worker"])
def test_servers_refuse_to_start_without_keys_or_insecure_no_auth(argv):
    done = subprocess.run([*LORAFLEET, *argv], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"lorafleet {argv[0]}: error: no key configuration" in done.stderr
    assert "--insecure-no-auth" in done.stderr and "--auth-keys" in done.stderr


def test_a_malformed_key_file_is_one_line(tmp_path):
    path = tmp_path / "keys.jsonl"
    path.write_text('{"id": "nothex", "hash": "x", "role": "admin"}\n')
    done = subprocess.run([*LORAFLEET, "gateway", "--controlplane", NOWHERE, "--port", "0",
                           "--auth-keys", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"error: --auth-keys: {path}:1: id: 'nothex' is not 12 hex characters" in done.stderr


def test_insecure_no_auth_starts_and_says_so_loudly(etcd):
    process = subprocess.Popen(
        [*LORAFLEET, "controlplane", "--etcd", etcd.url, "--root", etcd.root, "--port", "0",
         "--insecure-no-auth"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in process.stdout.readline()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "WARNING" in stderr and "AUTH IS OFF (--insecure-no-auth)" in stderr


def test_key_hash_prints_a_record_to_append_and_the_key_once():
    done = subprocess.run([*LORAFLEET, "key", "hash", "--role", "tenant", "--tenant", "acme"],
                          capture_output=True, text=True, timeout=60, check=False)
    record = KeyRecord.from_json(done.stdout)
    key = done.stderr.rsplit(" ", 1)[1].strip()
    assert done.stderr.startswith(f"key {record.key_id} (shown once): ")
    assert record.tenant == "acme" and key.startswith(f"lf_{record.key_id}_")
    assert key not in done.stdout and "argon2id" in record.hash


async def test_key_and_audit_commands_against_the_control_plane(secured, keys, capsys):
    common = ["--controlplane", f"127.0.0.1:{secured.port}", "--api-key", keys.admin]

    async def run(*argv) -> tuple[int, str]:
        status = await asyncio.to_thread(lorafleet, [*argv, *common])
        return status, capsys.readouterr().out

    status, out = await run("key", "create", "--role", "tenant", "--tenant", "initech")
    assert status == 0 and "initech" in out and "shown once" in out
    key_id = out.split()[out.split().index("tenant") - 1]
    status, out = await run("key", "list", "--json")
    listed = {k["key_id"]: k["source"] for k in map(json.loads, out.splitlines())}
    assert listed[key_id] == "etcd" and all("lf_" not in line for line in out)
    # Issue 22 #8: right after `up` the list looked empty, its keys being in the bootstrap
    # file; those are listed too, and revoking one says where to remove it.
    file_key = keys.acme.split("_")[1]
    assert listed[file_key] == "file"
    assert await asyncio.to_thread(lorafleet, ["key", "revoke", file_key, *common]) == 1
    assert "--auth-keys file" in capsys.readouterr().err
    assert (await run("key", "revoke", key_id))[0] == 0
    status, out = await run("audit", "--since", "5m", "--json")
    actions = [(e["action"], e["result"]) for e in map(json.loads, out.splitlines())]
    assert [a for a, _ in actions] == ["CreateKey", "RevokeKey", "RevokeKey"]
    assert actions[1][1].startswith("refused: FailedPrecondition") and actions[2][1] == "ok"
    assert (await run("audit", "--since", "2999-01-01T00:00:00Z"))[1].count("\n") == 1  # header
    tenant = await asyncio.to_thread(lorafleet, ["audit", *common[:2], "--api-key", keys.acme])
    assert tenant == 1 and "PERMISSION_DENIED" in capsys.readouterr().err


def test_since_takes_durations_and_timestamps():
    now = datetime.datetime(2026, 11, 28, 12, tzinfo=datetime.timezone.utc)
    assert since_of("2h", now) == now - datetime.timedelta(hours=2)
    assert since_of("2026-11-28T09:00:00Z", now).hour == 9
    with pytest.raises(ValueError, match="duration"):
        since_of("yesterday", now)


def test_key_hash_can_write_the_key_to_a_private_file(tmp_path):
    path = tmp_path / "worker-key"
    done = subprocess.run([*LORAFLEET, "key", "hash", "--role", "worker", "--key-file", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    record = KeyRecord.from_json(done.stdout)
    assert path.read_text().startswith(f"lf_{record.key_id}_") and path.stat().st_mode & 0o077 == 0
    assert "lf_" not in done.stderr and str(path) in done.stderr
