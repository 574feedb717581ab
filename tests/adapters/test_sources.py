"""Source URIs: plain paths, file:// and s3:// (through an injected S3 client; no network)."""

from __future__ import annotations

import hashlib
import pathlib
import sys

import grpc
import pytest

from lorafleet.dataplane.adapters import (
    AdapterInvalid,
    AdapterNotFound,
    AdapterSourceUnavailable,
    BaseModelMismatch,
    SourceResolver,
)
from lorafleet.dataplane.adapters.loader import load_adapter, validate_adapter


class FakeS3:
    """The two boto3 S3 client calls the resolver uses, over an in-memory bucket."""

    def __init__(self, objects: dict[str, dict[str, bytes]]) -> None:
        self.objects = objects
        self.num_downloads = 0

    def list_objects_v2(self, *, Bucket, Prefix, Delimiter, ContinuationToken=None):
        keys = sorted(
            k
            for k in self._bucket(Bucket)
            if k.startswith(Prefix) and Delimiter not in k[len(Prefix) :]
        )
        start = int(ContinuationToken or 0)  # one key per page, to exercise pagination
        page = {
            "Contents": [
                {"Key": k, "ETag": hashlib.md5(self.objects[Bucket][k]).hexdigest()}
                for k in keys[start : start + 1]
            ]
        }
        if start + 1 < len(keys):
            page.update(IsTruncated=True, NextContinuationToken=str(start + 1))
        return page

    def download_file(self, bucket, key, filename):
        self.num_downloads += 1
        pathlib.Path(filename).write_bytes(self._bucket(bucket)[key])

    def _bucket(self, name):
        if name not in self.objects:
            error = RuntimeError("bucket missing")
            error.response = {"Error": {"Code": "NoSuchBucket"}}
            raise error
        return self.objects[name]


def upload(adapter_dir: pathlib.Path, prefix: str) -> dict[str, bytes]:
    objects = {f"{prefix}/{p.name}": p.read_bytes() for p in adapter_dir.iterdir()}
    objects[f"{prefix}/README.md"] = b"not part of the adapter"
    return objects


def test_plain_path_and_file_uri_load_the_same_adapter(plain_adapter, model_config):
    uris = [str(plain_adapter), plain_adapter.as_uri(), f"file://localhost{plain_adapter}"]
    digests = {load_adapter(uri, model_config, max_lora_rank=8).digest for uri in uris}
    assert len(digests) == 1
    assert load_adapter(uris[1], model_config, max_lora_rank=8).source == uris[1]


@pytest.mark.parametrize("make_uri", [str, pathlib.Path.as_uri], ids=["path", "file_uri"])
def test_missing_source_is_not_found(make_uri, tmp_path, model_config):
    uri = make_uri(tmp_path / "nope")
    with pytest.raises(AdapterNotFound, match="not found or not readable"):
        load_adapter(uri, model_config, max_lora_rank=8)
    with pytest.raises(AdapterNotFound):
        validate_adapter(uri, model_config, max_lora_rank=8)


def test_bad_uris_are_invalid(plain_adapter, model_config):
    with pytest.raises(AdapterInvalid, match="unsupported scheme 'https'"):
        load_adapter("https://example.com/adapter", model_config, max_lora_rank=8)
    report = validate_adapter("gs://bucket/adapter", model_config, max_lora_rank=8)
    assert not report.is_valid and "unsupported scheme 'gs'" in report.reasons[0]
    with pytest.raises(AdapterNotFound, match="not found or not readable"):  # a file is "absent"
        load_adapter(str(plain_adapter / "adapter_config.json"), model_config, max_lora_rank=8)
    with pytest.raises(AdapterInvalid, match="must name a bucket and a prefix"):
        SourceResolver(s3_client=FakeS3({})).resolve("s3://bucket-only")


def test_s3_without_boto3_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(AdapterSourceUnavailable, match=r"lorafleet\[s3\]"):
        SourceResolver(tmp_path).resolve("s3://bucket/acme/support")


def test_s3_adapter_is_mirrored_once_and_refetched_when_changed(
    plain_adapter, model_config, tmp_path
):
    s3 = FakeS3({"models": upload(plain_adapter, "acme/support")})
    resolver = SourceResolver(tmp_path / "cache", s3_client=s3)
    local = load_adapter(str(plain_adapter), model_config, max_lora_rank=8)
    remote = load_adapter(
        "s3://models/acme/support", model_config, max_lora_rank=8, resolver=resolver
    )
    assert remote.digest == local.digest and remote.source == "s3://models/acme/support"
    assert s3.num_downloads == 2  # config and weights; README.md is not fetched
    load_adapter("s3://models/acme/support", model_config, max_lora_rank=8, resolver=resolver)
    assert s3.num_downloads == 2  # unchanged objects: served from the cache
    config_key = "acme/support/adapter_config.json"
    s3.objects["models"][config_key] = s3.objects["models"][config_key].replace(
        b'"lora_alpha": 8', b'"lora_alpha": 16'
    )
    changed = load_adapter(
        "s3://models/acme/support", model_config, max_lora_rank=8, resolver=resolver
    )
    assert changed.digest != local.digest and s3.num_downloads == 4
    assert changed.weights(0, "q_proj").scale == 4.0


def test_s3_missing_prefix_or_bucket_is_not_found(plain_adapter, tmp_path):
    resolver = SourceResolver(
        tmp_path, s3_client=FakeS3({"models": upload(plain_adapter, "acme/support")})
    )
    with pytest.raises(AdapterNotFound, match="not found or not readable"):
        resolver.resolve("s3://models/acme/other")
    with pytest.raises(AdapterNotFound, match="not found or not readable"):
        resolver.resolve("s3://elsewhere/acme/support")


def test_s3_failures_are_unavailable(tmp_path):
    class Denied(FakeS3):
        def list_objects_v2(self, **kwargs):
            error = RuntimeError("Access Denied")
            error.response = {"Error": {"Code": "AccessDenied"}}
            raise error

    with pytest.raises(AdapterSourceUnavailable, match="try again later"):
        SourceResolver(tmp_path, s3_client=Denied({})).resolve("s3://models/acme/support")


def test_errors_name_real_grpc_status_codes():
    expected = {
        AdapterNotFound: grpc.StatusCode.NOT_FOUND,
        AdapterInvalid: grpc.StatusCode.INVALID_ARGUMENT,
        BaseModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
        AdapterSourceUnavailable: grpc.StatusCode.UNAVAILABLE,
    }
    for error, code in expected.items():
        assert getattr(grpc.StatusCode, error.status_code_name) is code
    assert issubclass(BaseModelMismatch, AdapterInvalid)
