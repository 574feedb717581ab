"""The CPU backend's native kernels (kernels/cpu/native.c) against the torch ops they
replace, the build and its cache, and the torch path kept where they cannot run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lorafleet.dataplane.model import attention
from lorafleet.dataplane.model.attention import DecodeGroup
from lorafleet.dataplane.model.rope import apply_rotary_
from lorafleet.kernels.cpu import native
from tests.support.tiny_models import make_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _built():
    """This machine has a C compiler: the kernels must build here (CI included)."""
    assert native.library() is not None, "the native kernels did not build"


@pytest.mark.parametrize("rows,width,with_delta", [(1, 576, True), (32, 256, True),
                                                   (5, 96, False), (9, 1024, True)])
def test_add_rms_norm_adds_in_place_and_normalizes_like_torch(rows, width, with_delta):
    torch.manual_seed(rows)
    hidden, delta = torch.randn(rows, width) * 3, torch.randn(rows, width)
    weight = torch.randn(width)
    expected_hidden = hidden + delta if with_delta else hidden.clone()
    expected = F.rms_norm(expected_hidden, (width,), weight, 1e-6)
    out = native.add_rms_norm(hidden, delta if with_delta else None, weight, 1e-6)
    assert torch.equal(hidden, expected_hidden)  # the add is exact
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6)


def test_add_rms_norm_reads_rows_through_their_stride():
    torch.manual_seed(0)
    wide = torch.randn(6, 80)
    hidden, delta = wide[:, :32].contiguous(), wide[:, 40:72]  # delta: stride 80
    weight = torch.randn(32)
    expected = F.rms_norm(hidden + delta, (32,), weight, 1e-5)
    torch.testing.assert_close(native.add_rms_norm(hidden, delta, weight, 1e-5), expected,
                               rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("tokens,heads,kv_heads,dim", [(1, 9, 3, 64), (33, 4, 2, 64),
                                                       (70, 2, 1, 128), (3, 4, 4, 16)])
def test_rotary_in_place_is_torchs_to_the_bit(tokens, heads, kv_heads, dim):
    """q and k side by side inside a q|k|v output (a view with a token stride), as the
    model turns them."""
    torch.manual_seed(tokens)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim)
    q_k = qkv[:, : (heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim)
    positions = torch.randint(0, 500, (tokens,))
    cos, sin = torch.randn(512, dim)[positions], torch.randn(512, dim)[positions]
    expected = q_k.clone()
    apply_rotary_(expected, cos.unsqueeze(1), sin.unsqueeze(1))  # the native path itself
    reference = q_k.clone()
    rolled = reference.roll(dim // 2, dims=-1).mul_(sin.unsqueeze(1))
    reference.mul_(cos.unsqueeze(1)).add_(rolled)
    untouched = qkv[:, (heads + kv_heads) * dim :].clone()
    native.rotary_(q_k, cos.unsqueeze(1), sin.unsqueeze(1))
    assert torch.equal(q_k, reference)
    assert torch.equal(expected, reference)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim :], untouched)  # v is not touched


def _paged(seed, lengths, kv_heads=2, dim=16, block_size=4, num_blocks=64):
    torch.manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim)
    max_blocks = -(-max(lengths) // block_size)
    # Distinct blocks per sequence, padded with block 0 past each one's own.
    order = torch.randperm(num_blocks)
    tables, used = [], 0
    for length in lengths:
        own = -(-length // block_size)
        tables.append(order[used : used + own].tolist() + [0] * (max_blocks - own))
        used += own
    return k_cache, v_cache, torch.tensor(tables)


def test_a_cache_folder_others_can_write_to_is_refused(tmp_path, monkeypatch):
    """The worker loads code from the cache: a folder another user could plant a library
    in (group- or world-writable) is not used."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(native.CACHE_ENV_VAR, str(shared))
    with pytest.raises(RuntimeError, match="not this user's alone"):
        native._built_library()
    assert list(shared.iterdir()) == []


def _group(tables, lengths, window=None):
    lengths = torch.tensor(lengths)
    keys = torch.arange(tables.shape[1] * 4)
    mask = keys[None, :] < lengths[:, None]
    if window is not None:
        mask &= keys[None, :] > (lengths[:, None] - 1 - window)
    return DecodeGroup(start=0, stop=len(lengths), block_tables=tables,
                       mask=mask[:, None, None, :], lengths=lengths, window=window)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (6, 2), (2, 2), (8, 1)])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("lengths", [[1, 4, 13, 30, 7], [30], [13, 2]],
                         ids=["per sequence", "per head of one", "per head of two"])
def test_decode_attention_reads_the_blocks_in_place_like_gather_and_sdpa(heads, kv_heads,
                                                                         window, lengths):
    """Work split per sequence (5 sequences for 2 threads) or per KV head (fewer)."""
    k_cache, v_cache, tables = _paged(heads + kv_heads, lengths, kv_heads=kv_heads)
    group = _group(tables, lengths, window)
    qkv = torch.randn(len(lengths), heads + 2 * kv_heads, 16)
    q = qkv[:, :heads]  # a view with a token stride, as in the model
    expected = attention._decode(q, k_cache, v_cache, group)
    got = native.decode_attention(q, k_cache, v_cache, tables, group.lengths, window)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_store_kv_writes_each_token_at_its_slot_and_nothing_else():
    k_cache, v_cache, _ = _paged(1, [4])
    before_k, before_v = k_cache.clone(), v_cache.clone()
    qkv = torch.randn(3, 4 + 2 + 2, 16)
    k, v = qkv[:, 4:6], qkv[:, 6:8]
    slots = torch.tensor([5, 0, 42])
    native.store_kv(k, v, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, 2, 16), v_cache.view(-1, 2, 16)
    assert torch.equal(flat_k[slots], k) and torch.equal(flat_v[slots], v)
    others = torch.ones(flat_k.shape[0], dtype=torch.bool)
    others[slots] = False
    assert torch.equal(flat_k[others], before_k.view(-1, 2, 16)[others])
    assert torch.equal(flat_v[others], before_v.view(-1, 2, 16)[others])


def test_argmax_gives_torchs_answers_on_ties_nans_and_infinities():
    torch.manual_seed(0)
    logits = torch.randn(8, 1000)
    logits[0, 7] = logits[0, 900] = 50.0  # a tie: the first
    logits[1, 300] = float("nan")  # a NaN: itself
    logits[1, 20] = 99.0
    logits[2, 10], logits[2, 999] = float("nan"), float("nan")
    logits[3] = float("-inf")  # all -inf: 0
    logits[4, 999] = float("inf")
    logits[5, 0] = 60.0  # the first value
    logits[6, 64] = logits[6, 63] = 70.0  # a tie across a chunk border
    assert native.argmax(logits).tolist() == logits.argmax(dim=-1).tolist()
    assert native.argmax(logits).tolist()[:7] == [7, 300, 10, 0, 999, 0, 63]
    wide = torch.randn(3, 50_000)[:, 1:49_153]  # a row stride past the width
    assert torch.equal(native.argmax(wide), wide.argmax(dim=-1))


def test_the_build_is_cached_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv(native.CACHE_ENV_VAR, str(tmp_path))
    first = native._built_library()
    built_at = first.stat().st_mtime_ns
    assert first.parent == tmp_path and first.suffix == ".so"
    assert native._built_library() == first and first.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left


_GREEDY = """
import json, sys
import torch
from lorafleet.dataplane.engine.params import SamplingParams
from lorafleet.dataplane.runner.factory import create_engine
from lorafleet.dataplane.runner.kv_cache import KVCacheBudget
from lorafleet.kernels.cpu import native
from tests.support.tiny_models import make_checkpoint
engine = create_engine(sys.argv[1], device="cpu", dtype=torch.float32,
                       kv_cache=KVCacheBudget(num_bytes=8 << 20))
params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
for i in range(3):
    engine.add_request(f"r{i}", [5 + i, 17, 3 * i + 1, 40] * (i + 1), params=params)
tokens = {}
while engine.has_unfinished():
    for output in engine.step():
        tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
print(json.dumps({"native": native.library() is not None, "describe": native.describe(),
                  "tokens": tokens}))
"""


def test_without_a_compiler_or_when_off_the_torch_ops_give_the_same_tokens(tmp_path):
    """No C compiler (a fresh cache and CC pointing nowhere) or LORAFLEET_CPU_NATIVE=off:
    the engine runs its torch ops, says so, and greedy tokens equal the native path's."""
    model = make_checkpoint(tmp_path / "model", "llama-gqa")
    runs = {
        "native": {},
        "off": {native.ENV_VAR: "off"},
        "no compiler": {"CC": str(tmp_path / "no-cc"),
                        native.CACHE_ENV_VAR: str(tmp_path / "cache")},
    }
    results, logs = {}, {}
    for name, env in runs.items():
        done = subprocess.run([sys.executable, "-c", _GREEDY, str(model)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})
        assert done.returncode == 0, done.stderr[-2000:]
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        logs[name] = done.stderr
    assert results["native"]["native"] and results["native"]["describe"] == "native kernels"
    assert not results["off"]["native"]
    assert "LORAFLEET_CPU_NATIVE=off" in results["off"]["describe"]
    assert not results["no compiler"]["native"]
    assert "CPU native kernels unavailable" in logs["no compiler"]
    assert results["off"]["tokens"] == results["native"]["tokens"]
    assert results["no compiler"]["tokens"] == results["native"]["tokens"]
    assert len(results["native"]["tokens"]["r2"]) == 12


def test_a_wrong_switch_value_is_refused(monkeypatch):
    monkeypatch.setenv(native.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="LORAFLEET_CPU_NATIVE='maybe'"):
        native.is_enabled()


def test_layouts_the_kernels_do_not_read_take_the_torch_ops():
    """A 3-d RMSNorm input, heads that are not side by side, a strided last dimension:
    the model's helpers fall back to torch rather than read them wrongly."""
    from lorafleet.dataplane.model.decoder import add_rms_norm, rms_norm

    torch.manual_seed(3)
    weight = torch.randn(8)
    x = torch.randn(2, 3, 8)
    assert torch.equal(rms_norm(x, weight, 1e-6), F.rms_norm(x, (8,), weight, 1e-6))
    hidden, delta = torch.randn(4, 8), torch.randn(8, 4).t()  # delta strided along width
    expected = F.rms_norm(hidden + delta, (8,), weight, 1e-6)
    assert torch.equal(add_rms_norm(hidden, delta, weight, 1e-6), expected)
    heads_apart = torch.randn(3, 16, 5).transpose(1, 2)  # [tokens, heads, dim], dim strided
    cos, sin = torch.randn(3, 1, 16), torch.randn(3, 1, 16)
    reference = heads_apart.clone()
    rolled = reference.roll(8, dims=-1).mul_(sin)
    reference.mul_(cos).add_(rolled)
    apply_rotary_(heads_apart, cos, sin)
    assert torch.equal(heads_apart, reference)
