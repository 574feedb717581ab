"""Reading a checkpoint's safetensors (one file or shards with an index) into fused tensors."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import torch
from safetensors import safe_open

from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.kernels.cpu.linear import PackedWeight, Weight, pack


class CheckpointError(ValueError):
    """The checkpoint's weights are missing or do not match its config."""


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """One decoder layer, with q|k|v and gate|up each stacked for one matmul.

    Projection weights are stored transposed, [in_features, out_features], so a projection
    is `x @ w`: on CPU that runs faster than `F.linear` for wide outputs, same numbers. On
    CPU they are usually `PackedWeight`s instead (see cpu_linear), the same [in, out] weight
    reordered once for oneDNN. gate|up as one packed [in, 2 * intermediate] matmul ran as
    fast as two halves or faster (32-512 rows, hidden 256 and 1024), and lets an adapter's
    gate and up deltas share one kernel call.
    """

    input_norm: torch.Tensor
    qkv: Weight
    qkv_bias: torch.Tensor | None
    o: Weight
    o_bias: torch.Tensor | None
    post_attention_norm: torch.Tensor
    gate_up: Weight
    gate_up_bias: torch.Tensor | None
    down: Weight
    down_bias: torch.Tensor | None


@dataclasses.dataclass(frozen=True)
class ModelWeights:
    """Every tensor of a decoder, on its device and in its dtype.

    `embed` is [vocab, hidden]; `lm_head` is [hidden, vocab] (when the embeddings are
    tied: a transposed view of `embed`, or a `PackedWeight` sharing it).
    """

    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    norm: torch.Tensor
    lm_head: Weight

    def num_bytes(self) -> int:
        """Bytes the weights occupy (the tied head counted once)."""
        seen, total = set(), 0
        for t in _all_tensors(self):
            if isinstance(t, PackedWeight) and t.is_shared:
                t = t.packed
            if isinstance(t, PackedWeight):
                total += t.num_bytes()
            elif t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


def _all_tensors(weights: ModelWeights):
    yield from (weights.embed, weights.norm, weights.lm_head)
    for layer in weights.layers:
        # Not dataclasses.astuple: it deep-copies every tensor.
        fields = (getattr(layer, f.name) for f in dataclasses.fields(layer))
        yield from (t for t in fields if t is not None)


def safetensors_files(model_dir: pathlib.Path) -> list[pathlib.Path]:
    """The weight files: the shards named by model.safetensors.index.json, or the one file."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in shards]
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise CheckpointError(f"{model_dir} has neither model.safetensors nor an index of shards")
    return [single]


def load_weights(
    model_dir: str | pathlib.Path, config: ModelConfig, device: torch.device,
    dtype: torch.dtype, *, is_packed: bool = False,
) -> ModelWeights:
    """Reads and fuses a Llama-family checkpoint's weights onto `device` in `dtype`.

    is_packed: projections become `PackedWeight`s, each layer packed as soon as it is read
    (so loading never holds two copies of the model).
    """
    tensors = _TensorSource(pathlib.Path(model_dir), device, dtype)
    layers = tuple(_load_layer(tensors, i, is_packed) for i in range(config.num_layers))
    embed = tensors.get("model.embed_tokens.weight")
    if config.tie_word_embeddings and not tensors.has("lm_head.weight"):
        # Packing would copy the embeddings; the head stays a view of them, on CPU one that
        # oneDNN multiplies by (faster than torch.mm, see PackedWeight.sharing).
        lm_head = PackedWeight.sharing(embed) if is_packed else embed.t()
    else:
        lm_head = tensors.stack(["lm_head.weight"])
        lm_head = pack(lm_head) if is_packed else lm_head
    return ModelWeights(embed=embed, layers=layers, norm=tensors.get("model.norm.weight"),
                        lm_head=lm_head)


def _load_layer(tensors: _TensorSource, index: int, is_packed: bool) -> LayerWeights:
    p = f"model.layers.{index}."
    attn, mlp = p + "self_attn.", p + "mlp."
    layer = LayerWeights(
        input_norm=tensors.get(p + "input_layernorm.weight"),
        qkv=tensors.stack([attn + n + ".weight" for n in ("q_proj", "k_proj", "v_proj")]),
        qkv_bias=tensors.stack_optional([attn + n + ".bias" for n in ("q_proj", "k_proj",
                                                                      "v_proj")]),
        o=tensors.stack([attn + "o_proj.weight"]),
        o_bias=tensors.stack_optional([attn + "o_proj.bias"]),
        post_attention_norm=tensors.get(p + "post_attention_layernorm.weight"),
        gate_up=tensors.stack([mlp + n + ".weight" for n in ("gate_proj", "up_proj")]),
        gate_up_bias=tensors.stack_optional([mlp + n + ".bias" for n in ("gate_proj", "up_proj")]),
        down=tensors.stack([mlp + "down_proj.weight"]),
        down_bias=tensors.stack_optional([mlp + "down_proj.bias"]),
    )
    if not is_packed:
        return layer
    return dataclasses.replace(layer, qkv=pack(layer.qkv), o=pack(layer.o),
                               gate_up=pack(layer.gate_up), down=pack(layer.down))


class _TensorSource:
    """Named tensors across all safetensors files of a checkpoint, read on demand."""

    def __init__(self, model_dir: pathlib.Path, device: torch.device, dtype: torch.dtype) -> None:
        self._device, self._dtype = device, dtype
        self._where: dict[str, pathlib.Path] = {}
        for path in safetensors_files(model_dir):
            with safe_open(str(path), framework="pt") as f:
                self._where.update(dict.fromkeys(f.keys(), path))

    def has(self, name: str) -> bool:
        """True when some file of the checkpoint holds `name`."""
        return name in self._where

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name` on the target device and dtype."""
        if name not in self._where:
            raise CheckpointError(f"weight {name!r} is missing from the checkpoint")
        with safe_open(str(self._where[name]), framework="pt") as f:
            tensor = f.get_tensor(name)
        return tensor.to(device=self._device, dtype=self._dtype).contiguous()

    def stack(self, names: list[str]) -> torch.Tensor:
        """Projection weights [out, in] concatenated on out, returned as [in, sum(out)]."""
        return torch.cat([self.get(n) for n in names], dim=0).t().contiguous()

    def stack_optional(self, names: list[str]) -> torch.Tensor | None:
        """The concatenated biases, or None when the checkpoint has none of them."""
        present = [self.has(n) for n in names]
        if not any(present):
            return None
        if not all(present):
            raise CheckpointError(f"only some of {names} are in the checkpoint")
        return torch.cat([self.get(n) for n in names], dim=0)
