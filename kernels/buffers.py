"""`LoraBuffers`: the preallocated adapter slots of one (layer, projection group), in kernel layout.

A projection group is one projection (o_proj) or several that share their input and are
computed by one fused matmul (q|k|v, gate|up). Each projection of a group is a *slice*:
slice i owns every N-th row of the stacked A (rank-major: row r * N + i is rank r of
slice i) and output columns [start_i, start_i + out_i) of the fused output, so one shrink
call and one expand call serve the whole group. Rank-major rows put every slice's ranks
below r in the first r * N rows: the torch paths compute a step's adapters at the largest
rank among them, not at max_rank (`slot_ranks`, kept on the host, says which that is).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# One slice's adapter weights: A [r, in], B [out_i, r] and its scale; None = not adapted.
SliceWeights = tuple[torch.Tensor, torch.Tensor, float]


@dataclass(frozen=True)
class LoraBuffers:
    """Stacked A/B weights for `num_slots` adapters at `max_rank`, written in place per slot.

    The dataclass is frozen (the tensors never change identity); their contents change when
    an adapter is written into or cleared from a slot. Construction checks every shape,
    dtype and layout once, so the kernels only check the activations per call.

    Attributes (S = num_slots, R = max_rank, N = num_slices):
        lora_a: [S, R * N, in_features], shrink weights, rank-major: rank r of slice i in
            row r * N + i (`slice_a` gives a slice's rows).
        lora_b: [S, R, sum(out_i)], expand weights, rank-major too: rank r of every slice
            in row r, slice i in columns slice_starts[i]..[i+1], so the rows below a
            step's top rank are one contiguous block per slot.
        scale: fp32 [S, N], each slice's scale (alpha / r, or alpha / sqrt(r)).
        ranks: int32 [S, N], each slice's rank; 0 when the slot's adapter leaves that
            projection alone (or the slot is empty): the slice then adds nothing.
        slice_starts: int32 [N + 1], where each slice's output columns start (and the total).
        slice_sizes: out_i per slice, as Python ints.
    """

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    scale: torch.Tensor
    ranks: torch.Tensor
    slice_starts: torch.Tensor
    slice_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_buffers(self)
        # Host copies of ranks and scale, changed only with them (write_slot, clear_slot):
        # the torch paths read them every call, where a tensor read costs an op.
        is_meta = self.ranks.device.type == "meta"
        object.__setattr__(self, "_host_ranks", [] if is_meta else self.ranks.tolist())
        object.__setattr__(self, "_host_scales", [] if is_meta else self.scale.tolist())
        object.__setattr__(self, "_gains", {})  # dtype -> [S, N, max_rank] gain

    @classmethod
    def allocate(
        cls,
        *,
        num_slots: int,
        max_rank: int,
        in_features: int,
        out_features: int | Sequence[int],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> LoraBuffers:
        """Zeroed buffers with every slot empty; `out_features` has one size per slice."""
        sizes = (out_features,) if isinstance(out_features, int) else tuple(out_features)
        if min(num_slots, max_rank, in_features, *sizes) <= 0:
            raise ValueError("num_slots, max_rank, in_features and out_features must be positive")
        num_slices = len(sizes)
        starts = [sum(sizes[:i]) for i in range(num_slices + 1)]
        return cls(
            lora_a=torch.zeros((num_slots, num_slices * max_rank, in_features), dtype=dtype,
                               device=device),
            lora_b=torch.zeros((num_slots, max_rank, starts[-1]), dtype=dtype, device=device),
            scale=torch.zeros((num_slots, num_slices), dtype=torch.float32, device=device),
            ranks=torch.zeros((num_slots, num_slices), dtype=torch.int32, device=device),
            slice_starts=torch.tensor(starts, dtype=torch.int32, device=device),
            slice_sizes=sizes,
        )

    @property
    def num_slots(self) -> int:
        """Adapter slots in these buffers."""
        return self.lora_a.shape[0]

    @property
    def num_slices(self) -> int:
        """Projections in the group (1 for an unfused projection)."""
        return len(self.slice_sizes)

    @property
    def max_rank(self) -> int:
        """The rank every slot is sized for, per slice."""
        return self.lora_b.shape[1]

    @property
    def in_features(self) -> int:
        """Columns of the input x."""
        return self.lora_a.shape[2]

    @property
    def out_features(self) -> int:
        """Columns of the fused output y, all slices together."""
        return self.lora_b.shape[2]

    @functools.cached_property  # read on every kernel call; the sizes never change
    def slice_columns(self) -> tuple[slice, ...]:
        """Each slice's columns of y (and of lora_b)."""
        starts = (0, *_running_sums(self.slice_sizes))
        return tuple(slice(starts[i], starts[i + 1]) for i in range(self.num_slices))

    @property
    def num_bytes_per_slot(self) -> int:
        """Bytes one slot occupies (A and B at max_rank, plus its scales and ranks)."""
        weights = (self.lora_a[0].numel() + self.lora_b[0].numel()) * self.lora_a.element_size()
        return weights + (self.scale.element_size() + self.ranks.element_size()) * self.num_slices

    @property
    def slot_ranks(self) -> list[list[int]]:
        """Each slot's rank per slice, on the host (read-only; what `ranks` holds)."""
        return self._host_ranks

    @property
    def slot_scales(self) -> list[list[float]]:
        """Each slot's scale per slice, on the host (read-only; what `scale` holds)."""
        return self._host_scales

    def gain_upto(self, top: int, dtype: torch.dtype) -> torch.Tensor:
        """[S, N, top] in `dtype`: scale[s, i] for r < ranks[s, i], else 0; what the torch
        paths multiply the shrink by (it scales, and drops any rank past the slot's own).
        A view of one tensor per dtype kept until a slot changes, so a step's calls do not
        rebuild it from ranks and scale."""
        gain = self._gains.get(dtype)
        if gain is None:
            is_live = torch.arange(self.max_rank, device=self.ranks.device) < self.ranks[:, :, None]
            gain = torch.where(is_live, self.scale[:, :, None], 0.0).to(dtype)
            self._gains[dtype] = gain
        return gain[:, :, :top]

    def slice_a(self, slot: int, index: int) -> torch.Tensor:
        """A view of slice `index`'s shrink rows of `slot`: [max_rank, in_features]."""
        return self.lora_a[slot, index::self.num_slices]

    def write_slot(self, slot: int, slices: Sequence[SliceWeights | None]) -> None:
        """Copies one adapter into `slot`: per slice (A [r, in], B [out_i, r], scale) or None.

        Padding past each rank and slices given as None are zeroed, which keeps stale
        weights of a previous adapter out of the buffer (the kernels never read them).
        """
        self._check_slot(slot)
        if len(slices) != self.num_slices:
            raise ValueError(f"got {len(slices)} slices for a group of {self.num_slices}")
        for index, weights in enumerate(slices):
            if weights is not None:
                self._check_slice(index, *weights)
        self.clear_slot(slot)
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        columns = self.slice_columns
        ranks, scales = [0] * self.num_slices, [0.0] * self.num_slices
        for index, weights in enumerate(slices):
            if weights is None:
                continue
            a, b, scale = weights
            rank = a.shape[0]
            self.slice_a(slot, index)[:rank].copy_(a)
            self.lora_b[slot, :rank, columns[index]].copy_(b.t())
            ranks[index], scales[index] = rank, scale
        self.ranks[slot] = torch.tensor(ranks, dtype=torch.int32)
        self.scale[slot] = torch.tensor(scales, dtype=torch.float32)
        self._host_ranks[slot] = ranks
        self._host_scales[slot] = self.scale[slot].tolist()  # rounded to fp32, as the kernels see it
        self._gains.clear()

    def clear_slot(self, slot: int) -> None:
        """Marks `slot` empty: rows that still point at it get nothing added."""
        self._check_slot(slot)
        self.ranks[slot] = 0
        self.scale[slot] = 0.0
        self._host_ranks[slot] = [0] * self.num_slices
        self._host_scales[slot] = [0.0] * self.num_slices
        self._gains.clear()

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is outside [0, {self.num_slots})")

    def _check_slice(self, index: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        out_features = self.slice_sizes[index]
        rank = a.shape[0] if a.dim() == 2 else None
        if a.shape != (rank, self.in_features) or b.shape != (out_features, rank):
            raise ValueError(
                f"slice {index}: adapter A {tuple(a.shape)} / B {tuple(b.shape)} do not fit "
                f"A [r, {self.in_features}] / B [{out_features}, r]")
        if not 0 < rank <= self.max_rank:
            raise ValueError(f"slice {index}: adapter rank {rank} is outside "
                             f"[1, max_rank={self.max_rank}]")


def _running_sums(sizes: Sequence[int]) -> list[int]:
    total, sums = 0, []
    for size in sizes:
        total += size
        sums.append(total)
    return sums


def _check_buffers(buffers: LoraBuffers) -> None:
    """Raises ValueError naming the first field whose shape, dtype or layout is wrong."""
    a, b = buffers.lora_a, buffers.lora_b
    if a.dtype not in (torch.float32, torch.float16, torch.bfloat16) or b.dtype != a.dtype:
        raise ValueError(f"lora_a and lora_b must share a float dtype, got {a.dtype} and {b.dtype}")
    if a.dim() != 3 or b.dim() != 3 or not (a.is_contiguous() and b.is_contiguous()):
        raise ValueError("lora_a and lora_b must be contiguous 3-D tensors")
    num_slots, num_slices = a.shape[0], len(buffers.slice_sizes)
    expected = {
        "lora_a": (num_slots, num_slices * b.shape[1], a.shape[2]),
        "lora_b": (num_slots, b.shape[1], sum(buffers.slice_sizes)),
        "scale": (num_slots, num_slices), "ranks": (num_slots, num_slices),
        "slice_starts": (num_slices + 1,),
    }
    for name, shape in expected.items():
        tensor = getattr(buffers, name)
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
    dtypes = (buffers.scale.dtype, buffers.ranks.dtype, buffers.slice_starts.dtype)
    if dtypes != (torch.float32, torch.int32, torch.int32):
        raise ValueError(f"scale must be float32, ranks and slice_starts int32, got {dtypes}")
    fields = (a, b, buffers.scale, buffers.ranks, buffers.slice_starts)
    if len({t.device for t in fields}) != 1:
        raise ValueError("all buffers must be on one device")
    if a.device.type == "meta":  # sizing only: no values to check
        return
    if buffers.slice_starts.tolist() != [0, *_running_sums(buffers.slice_sizes)]:
        raise ValueError("slice_starts must be the running sums of slice_sizes")
    ranks = buffers.ranks
    if ranks.numel() and not bool(((ranks >= 0) & (ranks <= b.shape[1])).all()):
        raise ValueError(f"ranks must lie in [0, max_rank={b.shape[1]}]")
