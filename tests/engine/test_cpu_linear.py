"""CPU projections packed once for oneDNN ("fast") keep transformers' greedy tokens.

The parity tests elsewhere run the default kind; these pin both kinds down on a model
wide enough (hidden 256, intermediate 688) that oneDNN sums in another order than MKL.
"""

from __future__ import annotations

import pytest
import torch

from lorafleet.dataplane.model.attention import AttentionMetadata, PrefillSpan
from lorafleet.dataplane.model.decoder import DecoderModel
from lorafleet.kernels.cpu import linear as cpu_linear
from lorafleet.kernels.cpu.linear import PackedWeight
from tests.engine.conftest import make_prompts
from tests.engine.drive import GREEDY, make_engine, run_all, tokens_of

WIDE = dict(hidden_size=256, intermediate_size=688, num_heads=8)
PROJECTIONS = ("qkv", "o", "gate_up", "down")


def _prefill_logits(model: DecoderModel, ids: list[int]) -> torch.Tensor:
    """Logits at every position of one prompt, computed as one prefill."""
    n, c = len(ids), model.config
    cache = torch.zeros(c.num_layers, 2, 1, n, c.num_kv_heads, c.head_dim, dtype=model.dtype)
    meta = AttentionMetadata(kv_positions=torch.arange(n), decodes=(),
                             prefills=(PrefillSpan(0, n, n, torch.tensor([0]), None),))
    with torch.inference_mode():
        return model.forward(torch.tensor(ids), torch.arange(n), meta, cache, torch.arange(n))


def test_fast_is_the_default_and_packs_every_projection(checkpoints, monkeypatch):
    monkeypatch.delenv(cpu_linear.ENV_VAR, raising=False)
    model = DecoderModel.from_dir(checkpoints("llama-gqa"), "cpu", torch.float32)
    for layer in model.weights.layers:
        assert all(isinstance(getattr(layer, p), PackedWeight) for p in PROJECTIONS)
    assert isinstance(model.weights.lm_head, PackedWeight)
    reference = DecoderModel.from_dir(checkpoints("llama-gqa"), "cpu", torch.float32,
                                      cpu_linear="reference")
    layer = reference.weights.layers[0]
    assert all(type(getattr(layer, p)) is torch.Tensor for p in PROJECTIONS)


def test_tied_head_stays_a_view_of_the_embeddings(checkpoints):
    model = DecoderModel.from_dir(checkpoints("llama-tied"), "cpu", torch.float32)
    assert isinstance(model.weights.layers[0].qkv, PackedWeight)
    head = model.weights.lm_head
    assert head.is_shared and head.packed.data_ptr() == model.weights.embed.data_ptr()
    reference = DecoderModel.from_dir(checkpoints("llama-tied"), "cpu", torch.float32,
                                      cpu_linear="reference")
    assert reference.weights.lm_head.data_ptr() == reference.weights.embed.data_ptr()


def test_weights_are_packed_at_load_never_per_step(checkpoints, monkeypatch):
    monkeypatch.delenv(cpu_linear.ENV_VAR, raising=False)
    made = []
    original = PackedWeight.__init__

    def counting_init(self, weight):
        made.append(weight.shape)
        original(self, weight)

    monkeypatch.setattr(PackedWeight, "__init__", counting_init)
    engine = make_engine(checkpoints("llama-gqa"))
    num_at_load = len(made)
    assert num_at_load == 4 * 2 + 1  # four per layer (q|k|v, o, gate|up, down), two layers, the head
    for i, prompt in enumerate(make_prompts((5, 9))):
        engine.add_request(f"r{i}", prompt, params=GREEDY)
    outputs = run_all(engine)
    assert all(len(tokens_of(o)) > 0 for o in outputs.values())
    assert len(made) == num_at_load


@pytest.mark.parametrize("kind", ["fast", "reference"])
def test_wide_model_greedy_matches_transformers(kind, checkpoints, hf_greedy, monkeypatch):
    monkeypatch.setenv(cpu_linear.ENV_VAR, kind)
    prompts = make_prompts()
    engine = make_engine(checkpoints("qwen2-bias", **WIDE))
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, params=GREEDY)
    outputs = run_all(engine)
    reference = hf_greedy("qwen2-bias", prompts, **WIDE)
    assert [tokens_of(outputs[f"r{i}"]) for i in range(len(prompts))] == reference


def test_fast_logits_stay_within_rounding_of_transformers(checkpoints):
    import transformers

    directory = checkpoints("qwen2-bias", **WIDE)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    fast = DecoderModel.from_dir(directory, "cpu", torch.float32, cpu_linear="fast")
    ids = make_prompts((40,))[0]
    with torch.inference_mode():
        expected = hf(torch.tensor([ids])).logits[0]
    got = _prefill_logits(fast, ids)
    # Another summation order moves float32 logits by ~1e-5 here; a wrong weight layout
    # or a dropped bias moves them by whole units.
    assert (got - expected).abs().max().item() < 1e-3
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_half_dtypes_pack_only_where_onednn_can(checkpoints, monkeypatch):
    monkeypatch.delenv(cpu_linear.ENV_VAR, raising=False)
    directory = checkpoints("llama-gqa")
    bf16 = DecoderModel.from_dir(directory, "cpu", torch.bfloat16)
    # bfloat16 packs on CPUs with AVX-512 (this one is asked, not assumed).
    is_packed = isinstance(bf16.weights.layers[0].qkv, PackedWeight)
    assert is_packed == _onednn_takes(torch.bfloat16)
    fp16 = DecoderModel.from_dir(directory, "cpu", torch.float16)
    assert type(fp16.weights.layers[0].qkv) is torch.Tensor
    assert _prefill_logits(bf16, [5, 6, 7]).isfinite().all()


def _onednn_takes(dtype: torch.dtype) -> bool:
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 8, dtype=dtype))
    except RuntimeError:
        return False
    return True


@pytest.fixture
def avx2_only(monkeypatch):
    """oneDNN as on a CPU without AVX-512: it refuses to pack bfloat16 weights."""
    original = torch.ops.mkldnn._reorder_linear_weight

    def refuse_bf16(weight, *args, **kwargs):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support "
                               "avx512bw, avx512vl and avx512dq")
        return original(weight, *args, **kwargs)

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse_bf16)
    monkeypatch.delenv(cpu_linear.ENV_VAR, raising=False)
    clear = getattr(cpu_linear, "_onednn_packs", None)
    if clear:
        clear.cache_clear()
    yield
    if clear:
        clear.cache_clear()


def test_bf16_on_a_cpu_onednn_refuses_runs_on_plain_tensors(avx2_only, checkpoints, caplog):
    directory = checkpoints("qwen2-bias", **WIDE)
    with caplog.at_level("INFO", logger=cpu_linear.__name__):
        bf16 = DecoderModel.from_dir(directory, "cpu", torch.bfloat16)
        DecoderModel.from_dir(directory, "cpu", torch.bfloat16)
    assert all(type(getattr(layer, p)) is torch.Tensor
               for layer in bf16.weights.layers for p in PROJECTIONS)
    said = [r.getMessage() for r in caplog.records if r.name == cpu_linear.__name__]
    assert len(said) == 1 and "bfloat16" in said[0] and "avx512bw" in said[0]
    # float32 still packs: only the refused dtype falls back.
    fp32 = DecoderModel.from_dir(directory, "cpu", torch.float32)
    assert isinstance(fp32.weights.layers[0].qkv, PackedWeight)
    ids = make_prompts((12,))[0]
    assert torch.equal(_prefill_logits(bf16, ids)[-1].argmax(), _prefill_logits(fp32, ids)[-1].argmax())


def test_unknown_kind_is_refused_naming_the_choices(checkpoints, monkeypatch):
    with pytest.raises(ValueError, match="cpu_linear='fastest'.*fast, reference"):
        DecoderModel.from_dir(checkpoints("llama-gqa"), "cpu", torch.float32,
                              cpu_linear="fastest")
    monkeypatch.setenv(cpu_linear.ENV_VAR, "mkl")
    with pytest.raises(ValueError, match="LORAFLEET_CPU_LINEAR='mkl'"):
        DecoderModel.from_dir(checkpoints("llama-gqa"), "cpu", torch.float32)


def test_a_serving_engine_meets_a_bounded_set_of_matmul_shapes(checkpoints, monkeypatch):
    """Issue 21 #6: the engine process grew from 500 to 940 MB over 5,000 varied requests,
    because oneDNN keeps a kernel per input shape and every row count from 1 to the token
    budget came along. Row counts are padded to a few dozen shapes; the output is the same."""
    monkeypatch.delenv(cpu_linear.ENV_VAR, raising=False)
    seen: set[int] = set()
    original = cpu_linear._onednn_linear

    def counting(x, packed, bias):
        seen.add(x.shape[0])
        return original(x, packed, bias)

    monkeypatch.setattr(cpu_linear, "_onednn_linear", counting)
    engine = make_engine(checkpoints("llama-gqa"), num_blocks=2048)
    lengths = list(range(1, 150, 1))  # a prompt of every length: 149 row counts at prefill
    for i, n in enumerate(lengths):
        engine.add_request(f"r{i}", make_prompts((n,))[0], params=GREEDY)
    outputs = run_all(engine)
    assert all(tokens_of(outputs[f"r{i}"]) for i in range(len(lengths)))
    assert len(seen) <= 40 and max(seen) >= 149
    assert all(rows == cpu_linear.padded_rows(rows) for rows in seen)


@pytest.mark.parametrize("rows", [1, 7, 9, 63, 65, 200, 513, 1000])
def test_padded_rows_leave_the_product_unchanged(rows):
    weight = torch.randn(64, 48)
    x = torch.randn(rows, 64)
    packed = PackedWeight(weight)
    assert torch.allclose(cpu_linear.linear(x, packed, None), x @ weight, atol=1e-4)
    assert rows <= cpu_linear.padded_rows(rows) <= max(rows + 7, rows * 1.125)
