"""Hostile files are refused from their sizes, headers and declared shapes, before any data.

Measured before these checks: a sparse rank-600k weights file took 3.7 s and 1.76 GB to
validate; a 512 MB adapter_config.json took 1.0 GB; a deeply nested config JSON ended the
call with UNKNOWN (RecursionError).
"""

from __future__ import annotations

import json
import pathlib
import struct
import time
import tracemalloc

import pytest

from lorafleet.dataplane.adapters import AdapterInvalid, BaseModelMismatch
from lorafleet.dataplane.adapters.loader import load_adapter, validate_adapter
from tests.adapters.conftest import copy_adapter

MiB = 1024 * 1024
ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def write_sparse_weights(path: pathlib.Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors file with this header and zero data made by truncate (no bytes written)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = ELEMENT_BYTES[dtype] * shape[0] * shape[1]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(raw)) + raw)
        file.truncate(8 + len(raw) + offset)
    return offset


def lora_tensors(model_config, rank: int, projections=("q_proj", "v_proj")):
    """PEFT's tensor names and shapes for `rank` on `projections` of every layer."""
    shapes = model_config.projection_shapes()
    tensors = {}
    for layer in range(model_config.num_layers):
        for proj in projections:
            parent = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            stem = f"base_model.model.model.layers.{layer}.{parent}.{proj}"
            in_features, out_features = shapes[proj]
            tensors[f"{stem}.lora_A.weight"] = ("F32", [rank, in_features])
            tensors[f"{stem}.lora_B.weight"] = ("F32", [out_features, rank])
    return tensors


@pytest.fixture
def no_data_reads(monkeypatch):
    """Fails the test if any tensor data is read."""

    def refuse(*args, **kwargs):
        raise AssertionError("tensor data was read")

    monkeypatch.setattr("lorafleet.dataplane.adapters.loader.iter_module_tensors", refuse)


def timed_validate(adapter_dir, model_config, **kwargs):
    """validate_adapter's report, its CPU seconds and the Python heap peak (bytes) it reached.

    CPU time of this thread, not wall time, so other processes on a busy machine cannot
    fail the bound; a hang or a gigabyte read would still blow far past it.
    """
    tracemalloc.start()
    started = time.thread_time()
    try:
        report = validate_adapter(str(adapter_dir), model_config, **kwargs)
        return report, time.thread_time() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_declared_rank_above_the_limit_reads_no_data(
    plain_adapter, model_config, tmp_path, no_data_reads
):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "big", config_changes={"r": 600_000})
    num_bytes = write_sparse_weights(
        adapter_dir / "adapter_model.safetensors", lora_tensors(model_config, 600_000)
    )
    assert num_bytes > 900 * MiB  # declared, never written: the file is sparse
    report, elapsed, peak = timed_validate(adapter_dir, model_config, max_lora_rank=64)
    assert not report.is_valid and report.digest is None
    assert report.rank == 600_000  # still described from the header
    assert report.reasons == (
        "q_proj of layers 0, 1; v_proj of layers 0, 1: rank up to 600000 is above this worker's "
        "max_lora_rank 64",
    )
    assert elapsed < 1.0 and peak < 4 * MiB, (elapsed, peak)
    with pytest.raises(AdapterInvalid, match="max_lora_rank 64"):
        load_adapter(str(adapter_dir), model_config, max_lora_rank=64)


def test_config_file_above_the_cap_is_refused_unread(plain_adapter, model_config, tmp_path):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "huge")
    with open(adapter_dir / "adapter_config.json", "r+b") as file:
        file.truncate(64 * MiB)  # sparse: a huge "file" that costs nothing to make
    report, elapsed, peak = timed_validate(adapter_dir, model_config, max_lora_rank=8)
    assert report.reasons == (
        "adapter_config.json is 67108864 bytes; at most 1048576 (1 MiB) are accepted",
    )
    assert elapsed < 1.0 and peak < 4 * MiB, (elapsed, peak)


def test_weights_header_above_the_cap_is_refused_unread(plain_adapter, model_config, tmp_path):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "header")
    with open(adapter_dir / "adapter_model.safetensors", "wb") as file:
        file.write(struct.pack("<Q", 64 * MiB) + b"{")
        file.truncate(8 + 64 * MiB)
    report, elapsed, peak = timed_validate(adapter_dir, model_config, max_lora_rank=8)
    (reason,) = report.reasons
    assert reason.startswith("adapter_model.safetensors has a header of 67108864 bytes")
    assert elapsed < 1.0 and peak < 4 * MiB, (elapsed, peak)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,
        '{"a": ' * 50_000 + "1" + "}" * 50_000,
        json.dumps({"r": 4, "loftq_config": json.loads("[" * 40 + "]" * 40)}),
    ],
    ids=["open_brackets", "nested_objects", "nested_option"],
)
def test_deeply_nested_config_is_invalid(text, plain_adapter, model_config, tmp_path):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "deep")
    (adapter_dir / "adapter_config.json").write_text(text)
    report, elapsed, _ = timed_validate(adapter_dir, model_config, max_lora_rank=8)
    assert report.reasons == ("adapter_config.json nests JSON deeper than 32 levels",)
    assert elapsed < 1.0
    with pytest.raises(AdapterInvalid) as info:
        load_adapter(str(adapter_dir), model_config, max_lora_rank=8)
    assert not isinstance(info.value, BaseModelMismatch)  # INVALID_ARGUMENT


def test_nesting_inside_strings_does_not_count(plain_adapter, model_config, tmp_path):
    brackets = "[" * 100 + '\\"{' * 50  # in a string: text, not structure
    adapter_dir = copy_adapter(
        plain_adapter, tmp_path / "str", config_changes={"revision": brackets}
    )
    assert validate_adapter(str(adapter_dir), model_config, max_lora_rank=8).is_valid


def test_deeply_nested_weights_header_is_invalid(plain_adapter, model_config, tmp_path):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "deep")
    raw = ('{"__metadata__": ' + "[" * 100_000).encode()
    (adapter_dir / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    report = validate_adapter(str(adapter_dir), model_config, max_lora_rank=8)
    assert report.reasons == ("adapter_model.safetensors header nests JSON deeper than 32 levels",)


def test_huge_numbers_are_invalid_not_a_crash(plain_adapter, model_config, tmp_path):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "num")
    (adapter_dir / "adapter_config.json").write_text('{"r": 1' + "0" * 5000 + "}")
    report = validate_adapter(str(adapter_dir), model_config, max_lora_rank=8)
    (reason,) = report.reasons
    assert reason.startswith("adapter_config.json is not valid JSON")


def test_more_tensors_than_the_model_has_modules_is_refused_unread(
    plain_adapter, model_config, tmp_path, no_data_reads
):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "many")
    tensors = {f"junk.{i}": ("F32", [1, 1]) for i in range(5000)}
    write_sparse_weights(adapter_dir / "adapter_model.safetensors", tensors)
    report, elapsed, _ = timed_validate(adapter_dir, model_config, max_lora_rank=8)
    # 2 layers x 7 projections x (lora_A, lora_B) = 28 at most
    assert report.reasons == (
        "adapter_model.safetensors declares 5000 tensors; a LoRA adapter of this base model "
        "has at most 28",
    )
    assert elapsed < 1.0


def test_declared_shape_of_another_rank_reads_no_data(
    plain_adapter, model_config, tmp_path, no_data_reads
):
    adapter_dir = copy_adapter(plain_adapter, tmp_path / "shape")  # r=4 in its config
    write_sparse_weights(
        adapter_dir / "adapter_model.safetensors", lora_tensors(model_config, 600_000)
    )
    report = validate_adapter(str(adapter_dir), model_config, max_lora_rank=8)
    assert not report.is_valid and "lora_A has shape [600000, 64], expected [4, 64]" in str(
        report.reasons
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"lora_alpha": 10**400}, "lora_alpha must be a number"),
        ({"r": 10**400}, "r must be a positive integer"),
        ({"auto_mapping": ["x"], "peft_type": "IA3"}, "peft_type 'IA3' is not supported"),
    ],
    ids=["alpha_beyond_float", "rank_beyond_int32", "auto_mapping_not_an_object"],
)
def test_odd_config_values_are_refusals_not_crashes(
    changes, expected, plain_adapter, model_config, tmp_path
):
    changed = copy_adapter(plain_adapter, tmp_path / "odd", config_changes=changes)
    report = validate_adapter(str(changed), model_config, max_lora_rank=8)
    assert any(reason.startswith(expected) for reason in report.reasons), report.reasons
    assert all(len(reason) < 400 for reason in report.reasons)
