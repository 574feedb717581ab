"""Adapter source confinement: local sources only under --adapter-root (no '..', no
symlink out), s3:// only from --s3-allow buckets/prefixes, a size limit per adapter
checked before reading or downloading; refusals never show a server path."""

from __future__ import annotations

import argparse
import os
import pathlib

import grpc
import pytest

from lorafleet.dataplane.adapters.confinement import (
    OUTSIDE_ROOTS,
    S3_NOT_ALLOWED,
    SourcePolicy,
    add_source_arguments,
    policy_from_args,
)
from lorafleet.dataplane.adapters.errors import AdapterInvalid
from lorafleet.dataplane.adapters.sources import SourceResolver
from lorafleet.worker.v1 import worker_service_pb2 as wpb
from tests.server.conftest import worker_config
from tests.support.worker_thread import WorkerThread


def _adapter_dir(path: pathlib.Path, num_bytes: int = 10) -> pathlib.Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"x" * num_bytes)
    return path


@pytest.fixture
def tree(tmp_path):
    """(root with an adapter, a secret directory outside it shaped like an adapter)."""
    root = tmp_path / "adapters"
    _adapter_dir(root / "acme" / "support")
    secret = _adapter_dir(tmp_path / "secret")
    return root, secret


def _refusal(resolver: SourceResolver, uri: str) -> str:
    with pytest.raises(AdapterInvalid) as error:
        resolver.resolve(uri)
    message = str(error.value)
    assert "/" not in message, message  # no path of any kind
    return message


def test_only_directories_under_a_root_resolve(tree):
    root, secret = tree
    resolver = SourceResolver(policy=SourcePolicy.confined([root]))
    assert resolver.resolve(str(root / "acme" / "support")) == root / "acme" / "support"
    assert resolver.resolve(f"file://{root}/acme/support") == root / "acme" / "support"
    assert OUTSIDE_ROOTS in _refusal(resolver, str(secret))
    assert OUTSIDE_ROOTS in _refusal(resolver, f"file://{secret}")
    assert OUTSIDE_ROOTS in _refusal(resolver, "/etc")
    assert OUTSIDE_ROOTS in _refusal(resolver, str(root / "nowhere" / ".." / ".." / "secret"))
    assert OUTSIDE_ROOTS in _refusal(resolver, f"{root}/../secret")
    assert OUTSIDE_ROOTS in _refusal(resolver, f"{root}/acme/../acme/support")  # '..' at all


def test_symlinks_out_of_a_root_are_refused(tree):
    root, secret = tree
    resolver = SourceResolver(policy=SourcePolicy.confined([root]))
    (root / "escape").symlink_to(secret, target_is_directory=True)
    assert OUTSIDE_ROOTS in _refusal(resolver, str(root / "escape"))
    inside = root / "acme" / "support"
    (root / "linked").symlink_to(inside, target_is_directory=True)  # a link within is fine
    assert resolver.resolve(str(root / "linked")) == inside
    sneaky = _adapter_dir(root / "acme" / "sneaky")
    (sneaky / "adapter_model.safetensors").unlink()
    (sneaky / "adapter_model.safetensors").symlink_to(secret / "adapter_model.safetensors")
    assert OUTSIDE_ROOTS in _refusal(resolver, str(sneaky))


def test_missing_directories_inside_and_outside_read_differently_but_name_no_path(tree):
    root, _ = tree
    resolver = SourceResolver(policy=SourcePolicy.confined([root]))
    with pytest.raises(Exception) as error:  # noqa: PT011 - the type is checked below
        resolver.resolve(str(root / "acme" / "absent"))
    assert error.value.status_code_name == "NOT_FOUND" and str(root) not in str(error.value)
    assert OUTSIDE_ROOTS in _refusal(resolver, "/no/such/dir")  # existence is not probed


def test_without_roots_no_local_path_is_read(tree):
    root, _ = tree
    resolver = SourceResolver(policy=SourcePolicy.confined([]))
    assert OUTSIDE_ROOTS in _refusal(resolver, str(root / "acme" / "support"))


def test_adapters_over_the_size_limit_are_refused_from_their_file_sizes(tree):
    root, _ = tree
    big = _adapter_dir(root / "acme" / "big", num_bytes=5000)
    resolver = SourceResolver(policy=SourcePolicy.confined([root], max_adapter_bytes=1000))
    message = _refusal(resolver, str(big))
    assert "total 5002 bytes, over this worker's limit of 1000 bytes" in message
    assert resolver.resolve(str(root / "acme" / "support")) == root / "acme" / "support"


class CountingS3:
    """A bucket of adapter objects that counts every call."""

    def __init__(self, objects: dict[str, dict[str, bytes]]):
        self.objects, self.num_calls = objects, 0

    def list_objects_v2(self, *, Bucket, Prefix, Delimiter, ContinuationToken=None):
        self.num_calls += 1
        keys = [k for k in self.objects.get(Bucket, {}) if k.startswith(Prefix)]
        return {"Contents": [{"Key": k, "ETag": k, "Size": len(self.objects[Bucket][k])}
                             for k in keys]}

    def download_file(self, bucket, key, filename):
        self.num_calls += 1
        pathlib.Path(filename).write_bytes(self.objects[bucket][key])


def _s3(tmp_path, **policy) -> tuple[SourceResolver, CountingS3]:
    files = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 3000}
    objects = {bucket: {f"{prefix}/{name}": data for name, data in files.items()
                        for prefix in ("tenants/acme/support", "tenants/acme-evil/x")}
               for bucket in ("models", "other")}
    client = CountingS3(objects)
    return SourceResolver(tmp_path / "cache", s3_client=client,
                          policy=SourcePolicy.confined([], **policy)), client


def test_s3_only_from_allowed_buckets_and_prefixes(tmp_path):
    resolver, client = _s3(tmp_path, s3_allowed=["s3://models/tenants/acme"])
    assert (resolver.resolve("s3://models/tenants/acme/support") / "adapter_config.json").exists()
    client.num_calls = 0
    for uri in ("s3://other/tenants/acme/support", "s3://models/tenants/acme-evil/x",
                "s3://models/tenants/x"):
        assert S3_NOT_ALLOWED in _refusal(resolver, uri)
    assert client.num_calls == 0  # refused before asking S3 anything
    whole_bucket, _ = _s3(tmp_path, s3_allowed=["other"])
    assert whole_bucket.resolve("s3://other/tenants/acme-evil/x").is_dir()
    nothing, _ = _s3(tmp_path)
    assert S3_NOT_ALLOWED in _refusal(nothing, "s3://models/tenants/acme/support")


def test_s3_adapters_over_the_limit_are_refused_before_downloading(tmp_path):
    resolver, client = _s3(tmp_path, s3_allowed=["models"], max_adapter_bytes=1000)
    assert "over this worker's limit of 1000 bytes" in _refusal(
        resolver, "s3://models/tenants/acme/support")
    assert client.num_calls == 1  # the listing only: nothing downloaded


def test_command_line_defaults(tree, tmp_path):
    root, secret = tree
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", type=lambda t: tuple(t.split("=", 1)), action="append",
                        default=[])
    add_source_arguments(parser)
    given = policy_from_args(parser.parse_args(["--adapter", f"acme/s={root}/acme/support"]))
    assert given.local_roots == (root / "acme" / "support",)  # only the --adapter directories
    assert given.s3_allowed == () and given.max_adapter_bytes == 2 << 30
    assert policy_from_args(parser.parse_args([])).local_roots == ()  # no local path at all
    with pytest.raises(ValueError, match="--adapter-root .*missing: not a directory"):
        policy_from_args(parser.parse_args(["--adapter-root", str(tmp_path / "missing")]))
    with pytest.raises(ValueError, match="--s3-allow s3://: expected BUCKET"):
        policy_from_args(parser.parse_args(["--s3-allow", "s3://"]))
    with pytest.raises(ValueError, match="--max-adapter-bytes 0: must be positive"):
        policy_from_args(parser.parse_args(["--max-adapter-bytes", "0"]))


def test_a_confined_worker_refuses_load_adapter_outside_its_roots(lora_suite, tmp_path):
    base, adapters = lora_suite
    root = pathlib.Path(os.path.realpath(adapters["acme/qv8"]))  # this adapter only
    outside = tmp_path / "outside"
    outside.symlink_to(adapters["beta/q8"], target_is_directory=True)  # readable, not a root
    worker = WorkerThread(worker_config(base, sources=SourcePolicy.confined([root])))
    try:
        worker.admin.LoadAdapter(wpb.LoadAdapterRequest(
            adapter="acme/qv8", source_uri=str(adapters["acme/qv8"])))
        with pytest.raises(grpc.RpcError) as error:
            worker.admin.LoadAdapter(wpb.LoadAdapterRequest(
                adapter="acme/stolen", source_uri=str(outside)))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert OUTSIDE_ROOTS in error.value.details()
        assert str(root) not in error.value.details() and "tmp" not in error.value.details()
        report = worker.admin.ValidateAdapter(wpb.ValidateAdapterRequest(
            source_uri=f"{root}/../etc"))
        assert not report.is_valid and any(OUTSIDE_ROOTS in r for r in report.reasons)
    finally:
        worker.stop()
