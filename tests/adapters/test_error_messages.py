"""What callers are told: no server paths, nothing on whether a file exists, short echoes.

The detail (path, OS or S3 error) goes to the worker's log instead.
"""

from __future__ import annotations

import logging
import struct

import pytest

from lorafleet.dataplane.adapters import (
    AdapterInvalid,
    AdapterNotFound,
    AdapterSourceUnavailable,
    Problem,
    SourceResolver,
    ValidationReport,
)
from lorafleet.dataplane.adapters.loader import load_adapter, validate_adapter
from tests.adapters.conftest import copy_adapter
from tests.adapters.test_sources import FakeS3, upload

NOT_READABLE = "adapter source not found or not readable"
# Longest echo of caller input (120 characters and "…") plus the sentence around it.
MAX_MESSAGE_CHARS = 400


def local_uris(tmp_path, plain_adapter):
    """Sources that are missing, files, or under a file: all must read the same to a caller."""
    config = plain_adapter / "adapter_config.json"
    return {
        "missing": str(tmp_path / "nope"),
        "missing_file_uri": (tmp_path / "nope").as_uri(),
        "a_file": str(config),
        "a_file_uri": config.as_uri(),
        "under_a_file": str(config / "x"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "missing_file_uri", "a_file", "a_file_uri", "under_a_file"]
)
def test_local_sources_do_not_reveal_paths(case, plain_adapter, model_config, tmp_path, caplog):
    uri = local_uris(tmp_path, plain_adapter)[case]
    caplog.set_level(logging.INFO, logger="lorafleet.dataplane.adapters")
    with pytest.raises(AdapterNotFound) as info:
        load_adapter(uri, model_config, max_lora_rank=8)
    assert str(info.value) == NOT_READABLE
    with pytest.raises(AdapterNotFound) as info:
        validate_adapter(uri, model_config, max_lora_rank=8)
    assert str(info.value) == NOT_READABLE
    assert uri in caplog.text  # the operator still sees which source and why


def test_s3_refusals_do_not_reveal_buckets_or_s3_errors(plain_adapter, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lorafleet.dataplane.adapters")
    resolver = SourceResolver(
        tmp_path, s3_client=FakeS3({"models": upload(plain_adapter, "acme/support")})
    )
    for uri in ("s3://models/acme/other", "s3://elsewhere/acme/support"):
        with pytest.raises(AdapterNotFound) as info:
            resolver.resolve(uri)
        assert str(info.value) == NOT_READABLE
    assert "NoSuchBucket" in caplog.text and "s3://elsewhere/acme/support" in caplog.text

    class Denied(FakeS3):
        def list_objects_v2(self, **kwargs):
            error = RuntimeError("User arn:aws:iam::123:role/worker is not authorized")
            error.response = {"Error": {"Code": "AccessDenied"}}
            raise error

    with pytest.raises(AdapterSourceUnavailable) as info:
        SourceResolver(tmp_path, s3_client=Denied({})).resolve("s3://models/acme/support")
    assert "arn:aws" not in str(info.value) and "adapter source" in str(info.value)
    assert "arn:aws:iam::123:role/worker" in caplog.text


def test_long_uris_are_echoed_cut_short(model_config):
    long_uri = "gs://bucket/" + "a" * 10_000
    with pytest.raises(AdapterInvalid) as info:
        load_adapter(long_uri, model_config, max_lora_rank=8)
    message = str(info.value)
    assert "unsupported scheme 'gs'" in message and "…" in message
    assert len(message) < MAX_MESSAGE_CHARS, len(message)
    report = validate_adapter("file://" + "h" * 10_000 + "/x", model_config, max_lora_rank=8)
    assert "…" in report.reasons[0] and len(report.reasons[0]) < MAX_MESSAGE_CHARS


def test_long_source_in_a_refusal_is_cut_short():
    report = ValidationReport("s3://b/" + "p" * 10_000, (Problem("r must be positive"),))
    with pytest.raises(AdapterInvalid) as info:
        report.raise_if_invalid()
    assert len(str(info.value)) < MAX_MESSAGE_CHARS and "r must be positive" in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"target_modules": ["q_proj", "v_proj", "x" * 10_000]},
        {"some_future_option": "y" * 10_000},
        {"peft_type": "z" * 10_000},
        {"r": ["w" * 10_000]},
        {"auto_mapping": {"base_model_class": "C" * 10_000}},
    ],
    ids=["target_entry", "unknown_option", "peft_type", "bad_rank", "base_model_class"],
)
def test_config_values_are_echoed_cut_short(changes, plain_adapter, model_config, tmp_path):
    changed = copy_adapter(plain_adapter, tmp_path / "a", config_changes=changes)
    report = validate_adapter(str(changed), model_config, max_lora_rank=8)
    assert not report.is_valid
    for reason in report.reasons:
        assert len(reason) < MAX_MESSAGE_CHARS, reason[:200]
    assert any("…" in reason for reason in report.reasons), report.reasons


def test_header_names_and_dtypes_are_echoed_cut_short(plain_adapter, model_config, tmp_path):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "names")
    raw = (
        '{"' + "n" * 10_000 + '": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]},'
        '"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": '
        '{"dtype": "' + "D" * 10_000 + '", "shape": [4, 64], "data_offsets": [4, 8]},'
        '"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": '
        '{"dtype": "F32", "shape": [64, 4], "data_offsets": [8, 12]}}'
    ).encode()
    (adapter_dir / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(raw)) + raw + bytes(12)
    )
    report = validate_adapter(str(adapter_dir), model_config, max_lora_rank=8)
    assert not report.is_valid
    for reason in report.reasons:
        assert len(reason) < MAX_MESSAGE_CHARS, reason[:200]


@pytest.mark.parametrize(
    "uri",
    ["/tmp/" + "d" * 10_000, "/tmp/a\x00b", "file:///tmp/a%00b"],
    ids=["name_too_long", "nul_byte", "nul_byte_file_uri"],
)
def test_unusable_local_paths_are_not_found_not_a_crash(uri, model_config):
    with pytest.raises(AdapterNotFound, match="^adapter source not found or not readable$"):
        load_adapter(uri, model_config, max_lora_rank=8)


@pytest.mark.parametrize(
    "uri", ["s3://models/../../etc/x", "s3://models/acme/./x", "s3://../acme", "s3://m/a//b"]
)
def test_s3_prefixes_cannot_climb_out_of_the_cache(uri, tmp_path):
    resolver = SourceResolver(tmp_path / "cache", s3_client=FakeS3({}))
    with pytest.raises(AdapterInvalid, match="'.' or '..' path segment"):
        resolver.resolve(uri)
    assert not (tmp_path / "etc").exists()


def test_thousands_of_problems_are_summarised(plain_adapter, model_config, tmp_path):
    options = {f"future_option_{i}": True for i in range(5000)}
    changed = copy_adapter(plain_adapter, tmp_path / "many", config_changes=options)
    report = validate_adapter(str(changed), model_config, max_lora_rank=8)
    assert len(report.reasons) == 20 and report.reasons[-1] == "and 4981 more problems"
    with pytest.raises(AdapterInvalid) as info:
        load_adapter(str(changed), model_config, max_lora_rank=8)
    assert info.value.reasons == report.reasons
