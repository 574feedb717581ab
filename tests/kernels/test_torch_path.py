"""The torch path of `add_lora` (what the CPU engine runs) against an fp32 per-row loop."""

from __future__ import annotations

import random

import pytest
import torch

from lorafleet.kernels.batch import LoraBatch
from lorafleet.kernels.buffers import LoraBuffers
from lorafleet.kernels.cpu import lora as cpu_lora
from lorafleet.kernels.cpu.blocked import blocked_torch
from lorafleet.kernels.cpu.lora import prefers_slot_blocks
from lorafleet.kernels.dispatch import add_lora
from lorafleet.kernels.sgmv import sgmv_torch
from tests.kernels.cases import PATTERNS, filled_buffers, reference_lora, request_slots, token_slots

HIDDEN = 4096
NUM_SLOTS = 16
RANKS = [8, 16, 32, 64] * (NUM_SLOTS // 4)
# (atol, rtol) against the fp32 reference; 16-bit paths round the rank-r intermediate too.
TOLERANCE = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 2e-2),
}


@pytest.fixture(scope="module", params=list(TOLERANCE), ids=str)
def buffers(request):
    """Sixteen adapter slots, ranks 8 to 64 mixed, hidden 4096, in one dtype."""
    return filled_buffers(RANKS, 64, HIDDEN, HIDDEN, request.param, seed=0)


def _batch_rows(style: str, pattern: str) -> list[int | None]:
    """Per-row slots: SGMV-style requests of 1-24 rows, or BGMV-style one row each."""
    if style == "bgmv":
        return request_slots(pattern, 32, NUM_SLOTS, seed=1)
    per_request = request_slots(pattern, 10, NUM_SLOTS, seed=2)
    rng = random.Random(3)
    return token_slots(per_request, [rng.randint(1, 24) for _ in per_request])


def _check(slots, buffers, kernel):
    gen = torch.Generator().manual_seed(4)
    dtype = buffers.lora_a.dtype
    x = torch.randn(len(slots), HIDDEN, generator=gen).to(dtype)
    y = torch.randn(len(slots), HIDDEN, generator=gen).to(dtype)
    expected = reference_lora(y, x, buffers, slots)
    before = y.clone()
    batch = LoraBatch.from_slots(slots)
    kernel(y, x, buffers, batch=batch)
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(y.float(), expected, atol=atol, rtol=rtol)
    base_rows = [row for row, slot in enumerate(slots) if slot is None]
    assert torch.equal(y[base_rows], before[base_rows]), "rows without an adapter changed"
    return batch


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("style", ["sgmv", "bgmv"])
def test_add_lora_matches_fp32_reference(buffers, pattern, style):
    _check(_batch_rows(style, pattern), buffers, add_lora)


def test_rows_already_grouped_by_adapter_use_views(buffers):
    slots = [None] * 3 + [1] * 5 + [4] * 7 + [None] * 2
    batch = _check(slots, buffers, add_lora)
    assert batch.sorted_rows_start == 3


@pytest.mark.parametrize("pattern", ["distinct", "zipf"])
@pytest.mark.parametrize("style", ["sgmv", "bgmv"])
def test_grouped_strategy_matches(buffers, pattern, style):
    # add_lora picks a torch strategy per batch by cost; each must be right wherever picked.
    _check(_batch_rows(style, pattern), buffers, sgmv_torch)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("style", ["sgmv", "bgmv"])
def test_blocked_strategy_matches(buffers, pattern, style):
    _check(_batch_rows(style, pattern), buffers, blocked_torch)


@pytest.mark.parametrize("slots", [
    [5, 2, 9, 2, None, 5],          # slots 2..9: range of 8 for 3 adapters, gathered
    [3, 4, None, 3, 5, 4, 4],       # slots 3..5 all used: views of the buffers
    [0, 2, 2, 1, 2, 0],             # 3 slots, the longest run 3 rows: padded blocks
    [7],                            # one row, one adapter
])
def test_slot_blocks_of_any_layout_match(buffers, slots):
    batch = _check(slots, buffers, blocked_torch)
    blocks = batch.slot_blocks
    used = sorted({slot for slot in slots if slot is not None})
    if used[-1] - used[0] + 1 <= 1.5 * len(used):
        assert blocks.slot_range == (used[0], used[-1] + 1)
    else:
        assert blocks.slot_range is None and blocks.block_slots.tolist() == used


@pytest.mark.parametrize("slots", [[None, 3, 4, 5, 6, None], [None, 3, 3, 4, 4, 5, 5]])
def test_rows_already_in_block_order_are_views_not_gathers(buffers, slots):
    """Consecutive rows, each slot's own, in slot order and none padded (a decode batch
    whose rows were placed in order): the blocks are views of x and y."""
    batch = _check(slots, buffers, blocked_torch)
    blocks = batch.slot_blocks
    assert blocks.is_dense and batch.sorted_rows_start == 1
    assert "source_rows" not in blocks.__dict__ and "padded_rows" not in blocks.__dict__


def test_a_step_with_no_adapter_rows_has_no_slot_blocks(buffers):
    batch = _check([None, None], buffers, blocked_torch)
    assert batch.slot_blocks is None


def test_many_adapters_with_one_row_each_run_over_slot_blocks():
    # 32 decode rows on 32 adapters: the grouped path would run 128 small ops per q|k|v
    # call (kernels/cpu/lora.py has the measurements).
    buffers = LoraBuffers.allocate(num_slots=32, max_rank=16, in_features=1024,
                                   out_features=(1024, 256, 256), dtype=torch.float32)
    batch = LoraBatch.from_slots(request_slots("distinct", 32, 32, seed=7))
    assert prefers_slot_blocks(batch, buffers)


def test_one_adapter_or_a_long_prefill_among_decode_rows_stays_grouped(buffers):
    one = LoraBatch.from_slots([3] * 32)
    prefill = LoraBatch.from_slots([0] * 200 + list(range(1, NUM_SLOTS)))
    assert not prefers_slot_blocks(one, buffers)
    assert not prefers_slot_blocks(prefill, buffers)


def test_y_may_be_a_column_slice_of_a_wider_output():
    buffers = filled_buffers([8, 16], 16, 64, 48, torch.float32, seed=5)
    slots = [1, None, 0, 1]
    x = torch.randn(4, 64)
    wide = torch.randn(4, 48 * 3)
    expected = reference_lora(wide[:, 48:96], x, buffers, slots)
    untouched = wide[:, :48].clone(), wide[:, 96:].clone()
    add_lora(wide[:, 48:96], x, buffers, batch=LoraBatch.from_slots(slots))
    torch.testing.assert_close(wide[:, 48:96], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(wide[:, :48], untouched[0]) and torch.equal(wide[:, 96:], untouched[1])


@pytest.mark.parametrize("num_adapters, is_blocked", [(1, False), (8, True), (32, True)])
def test_tiny_decode_path_is_the_one_measured_faster(num_adapters, is_blocked):
    """32 decode rows on the tiny model's q|k|v group (kernels/cpu/lora.py has the measurements)."""
    buffers = LoraBuffers.allocate(num_slots=32, max_rank=16, in_features=256,
                                   out_features=(256, 128, 128), dtype=torch.float32)
    batch = LoraBatch.from_slots([row % num_adapters for row in range(32)])
    assert prefers_slot_blocks(batch, buffers) is is_blocked


@pytest.mark.parametrize(("lora_threads", "kernel_threads"), [(None, 1), ("all", 2)])
def test_small_batches_use_one_thread_unless_the_threads_spin_for_them(
        buffers, monkeypatch, lora_threads, kernel_threads):
    # Waking sleeping (or throttled) OpenMP threads costs more than LoRA's small ops, so
    # they keep to one thread; the engine process whose threads spin uses every thread
    # (kernels/cpu/lora.py).
    if lora_threads is None:
        monkeypatch.delenv(cpu_lora.LORA_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(cpu_lora.LORA_THREADS_ENV, lora_threads)
    cpu_lora.uses_every_thread.cache_clear()
    seen = []
    for name in ("blocked_torch", "sgmv_torch"):
        kernel = getattr(cpu_lora, name)
        monkeypatch.setattr(cpu_lora, name, lambda *a, k=kernel, **kw: (
            seen.append(torch.get_num_threads()), k(*a, **kw)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check(_batch_rows("bgmv", "distinct"), buffers, add_lora)
        assert seen == [kernel_threads] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        monkeypatch.undo()
        cpu_lora.uses_every_thread.cache_clear()


def test_add_lora_gives_back_the_callers_thread_count(buffers, monkeypatch):
    # Small batches run their LoRA ops on one thread; the engine's matmuls must get every
    # thread back afterwards, also when the kernel refuses its arguments.
    monkeypatch.delenv(cpu_lora.LORA_THREADS_ENV, raising=False)
    cpu_lora.uses_every_thread.cache_clear()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check(_batch_rows("bgmv", "distinct"), buffers, add_lora)
        assert torch.get_num_threads() == 2
        slots = _batch_rows("bgmv", "distinct")
        wrong = torch.zeros(len(slots), HIDDEN + 1, dtype=buffers.lora_a.dtype)
        with pytest.raises(ValueError):
            add_lora(wrong, wrong, buffers, batch=LoraBatch.from_slots(slots))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        monkeypatch.undo()
        cpu_lora.uses_every_thread.cache_clear()


def test_a_slot_rewritten_with_another_rank_and_scale_is_computed_with_its_new_ones():
    # The blocked path keeps each (top rank, dtype)'s gain until a slot changes: a stale one
    # would scale a new adapter by the old one's alpha / r, or keep ranks it no longer has.
    buffers = filled_buffers([16, 8, 16, 4], 16, 64, (64, 32), torch.float32, seed=3)
    slots = [0, 1, 2, 3] * 4
    x, y = torch.randn(len(slots), 64), torch.zeros(len(slots), 96)
    batch = LoraBatch.from_slots(slots)
    blocked_torch(y.clone(), x, buffers, batch=batch)  # builds the gain for top rank 16
    gen = torch.Generator().manual_seed(5)
    buffers.write_slot(1, [(torch.randn(16, 64, generator=gen), torch.randn(64, 16, generator=gen),
                            0.25), None])
    buffers.clear_slot(3)
    out = y.clone()
    blocked_torch(out, x, buffers, batch=batch)
    torch.testing.assert_close(out, reference_lora(y, x, buffers, slots), atol=1e-4, rtol=1e-4)
