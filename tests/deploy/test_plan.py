"""`lorafleet plan` gives, figure for figure, what a real worker computes at start."""

from __future__ import annotations

import json

import pytest
import torch

from lorafleet.clients.cli import main as lorafleet
from lorafleet.dataplane.config import sizing
from lorafleet.dataplane.config.worker_config import WorkerConfig
from lorafleet.dataplane.lora.slots import DeviceSlotBank
from lorafleet.dataplane.model.config import ModelConfig
from lorafleet.dataplane.runner import kv_cache
from lorafleet.dataplane.server.build import build_worker
from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint

# A Llama 3 8B config.json: hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336.
LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16", "rope_theta": 500000.0, "tie_word_embeddings": False,
}
LIMITS = ["--max-loras", "3", "--max-lora-rank", "8", "--max-cpu-loras", "5"]
SIZES_FIELDS = ("max_loras", "max_lora_rank", "max_cpu_loras", "lora_slot_bytes",
                "lora_total_bytes", "num_kv_blocks", "kv_block_size", "kv_block_bytes",
                "num_kv_tokens", "max_model_len")


def run_plan(capsys, *argv: str) -> tuple[int, str, str]:
    """`lorafleet plan ARGV`: exit status, stdout, stderr."""
    status = lorafleet(["plan", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def plan_json(capsys, *argv: str) -> dict:
    """The object `lorafleet plan ARGV --json` prints."""
    status, out, _ = run_plan(capsys, *argv, "--json")
    assert status == 0
    return json.loads(out)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny checkpoints of three layouts: GQA, Qwen2 biases, tied embeddings."""
    root = tmp_path_factory.mktemp("plan")
    return {arch: make_checkpoint(root / arch, arch, num_layers=3)
            for arch in ("llama-gqa", "qwen2-bias", "llama-tied")}


@pytest.fixture
def llama_8b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_8B))
    return tmp_path


@pytest.mark.parametrize("arch,dtype", [("llama-gqa", "float32"), ("qwen2-bias", "bfloat16"),
                                        ("llama-tied", "float16")])
def test_every_figure_equals_the_built_worker(capsys, checkpoints, arch, dtype):
    model = checkpoints[arch]
    worker, sizes = build_worker(WorkerConfig(
        model, device="cpu", dtype=dtype, max_loras=3, max_lora_rank=8, max_cpu_loras=5,
        kv_cache_bytes=3_000_000))
    plan = plan_json(capsys, "--model", str(model), "--dtype", dtype, *LIMITS,
                     "--kv-cache-bytes", "3000000")
    assert {f: plan[f] for f in SIZES_FIELDS} == {f: getattr(sizes, f) for f in SIZES_FIELDS}
    runner = worker.bridge.link.engine.runner  # the engine thread's
    assert plan["weights_bytes"] == runner.model.weights.num_bytes()
    assert plan["num_kv_blocks"] * plan["kv_block_bytes"] == (
        runner.kv_cache.numel() * runner.kv_cache.element_size())
    status, out, _ = run_plan(capsys, "--model", str(model), "--dtype", dtype, *LIMITS,
                              "--kv-cache-bytes", "3000000")
    assert status == 0
    assert f"the worker will print: {sizes.describe()}" in out


def test_host_cache_figure_is_a_loaded_adapter_at_max_rank(capsys, checkpoints, tmp_path):
    model = checkpoints["llama-gqa"]
    adapter = make_adapter(model, tmp_path / "full", r=8, alpha=16, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    worker, _ = build_worker(WorkerConfig(model, device="cpu", max_lora_rank=8,
                                          kv_cache_bytes=3_000_000))
    loaded = worker.adapters.load(str(adapter))
    num_bytes = sum(w.a.numel() * w.a.element_size() + w.b.numel() * w.b.element_size()
                    for w in loaded.modules.values())
    plan = plan_json(capsys, "--model", str(model), *LIMITS)
    assert plan["host_adapter_bytes"] == num_bytes
    assert plan["host_cache_bytes"] == 5 * num_bytes


def test_gpu_budget_is_the_workers_fraction_of_what_the_weights_leave(capsys, llama_8b):
    plan = plan_json(capsys, "--model", str(llama_8b), "--max-loras", "16",
                     "--max-lora-rank", "16", "--gpu-memory", "80GiB")
    num_free = 80 * 2**30 - plan["weights_bytes"] - plan["rotary_bytes"]
    expected = kv_cache.count_kv_blocks(
        kv_cache.KVCacheBudget(fraction=kv_cache.DEFAULT_GPU_FRACTION), num_free,
        plan["lora_total_bytes"] + plan["graph_bytes"], plan["kv_block_bytes"])
    assert plan["num_kv_blocks"] == expected
    assert plan["kv_block_bytes"] == 2 * 2**20  # 32 layers x 8 heads x 128 x 2 x 16 x bf16


def test_a_gpu_workers_decode_graphs_come_out_of_the_kv_budget(capsys, llama_8b):
    """What create_engine reserves for the graphs (sizing.graph_memory_bytes and a scratch
    block), at the worker's defaults: 64 sequences, rank 64; none with --enforce-eager or
    on a CPU."""
    plan = plan_json(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB")
    config = ModelConfig.from_dict(LLAMA_8B)
    pool = sizing.graph_memory_bytes(config, max_num_seqs=64, max_lora_rank=64, dtype_bytes=2)
    assert plan["graph_bytes"] == pool + plan["kv_block_bytes"]
    assert 30 * 2**20 < pool < 300 * 2**20  # logits of 64 rows dominate: ~49 MB, doubled
    eager = plan_json(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB",
                      "--enforce-eager")
    assert eager["graph_bytes"] == 0
    assert eager["num_kv_blocks"] > plan["num_kv_blocks"]
    cpu = plan_json(capsys, "--model", str(llama_8b), "--kv-cache-bytes", "40GiB")
    assert cpu["graph_bytes"] == 0  # a CPU worker
    status, out, _ = run_plan(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB")
    assert "decode graphs" in out and status == 0


def test_the_graphs_sizes_are_the_kernels_and_the_runners():
    from lorafleet.dataplane.runner import graphs
    from lorafleet.kernels import paged_attention

    assert sizing.GRAPH_PARTITION_SIZE == paged_attention._PARTITION_SIZE
    assert sizing.GRAPH_MAX_CONTEXT == graphs.DEFAULT_MAX_CONTEXT


def test_llama_8b_adapter_slot_at_rank_16(capsys, llama_8b):
    """The slot figure people quote, checked against a real slot bank (on the meta device:
    no memory is allocated)."""
    plan = plan_json(capsys, "--model", str(llama_8b), "--max-lora-rank", "16")
    bank = DeviceSlotBank(ModelConfig.from_dict(LLAMA_8B), num_slots=1, max_rank=16,
                          dtype=torch.bfloat16, device="meta")
    assert plan["lora_slot_bytes"] == bank.num_bytes_per_slot == 83_887_872  # 83.9 MB
    assert plan["weights_bytes"] == 16_060_522_496  # 8.03 B parameters in bf16
    assert plan["dtype"] == "bfloat16"


def test_defaults_are_the_workers(capsys, checkpoints):
    model = checkpoints["llama-gqa"]
    defaults = WorkerConfig(model)
    plan = plan_json(capsys, "--model", str(model))
    assert (plan["max_loras"], plan["max_lora_rank"], plan["max_cpu_loras"],
            plan["kv_block_size"]) == (defaults.max_loras, defaults.max_lora_rank,
                                       defaults.max_cpu_loras, defaults.block_size)
    assert plan["kv_budget_bytes"] == kv_cache.DEFAULT_CPU_BYTES
    assert plan["prefix_cache_scope"] == defaults.prefix_cache_scope


def test_prefix_cache_is_the_kv_caches_idle_blocks(capsys, llama_8b):
    plan = plan_json(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB")
    assert plan["prefix_cache_max_blocks"] == plan["num_kv_blocks"]
    assert plan["device_bytes"] == plan_json(capsys, "--model", str(llama_8b), "--gpu-memory",
                                             "80GiB", "--no-prefix-cache")["device_bytes"]
    off = plan_json(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB",
                    "--no-prefix-cache")
    assert (off["prefix_cache_scope"], off["prefix_cache_max_blocks"]) == (None, 0)
    status, out, _ = run_plan(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB",
                              "--prefix-cache-scope", "global")
    assert status == 0 and "prefix cache: idle KV blocks keep prompt prefixes, shared across " \
        "tenants" in out


def test_largest_batch_at_a_context(capsys, llama_8b):
    plan = plan_json(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB",
                     "--context", "4096", "--max-num-seqs", "1000")
    assert plan["num_seqs_fit"] == plan["num_kv_blocks"] // (4096 // 16)
    assert plan["max_batch"] == plan["num_seqs_fit"]
    capped = plan_json(capsys, "--model", str(llama_8b), "--gpu-memory", "80GiB",
                       "--context", "4096", "--max-num-seqs", "8")
    assert capped["max_batch"] == 8


@pytest.mark.parametrize("argv,message", [
    (["--gpu-memory", "8GiB"], "do not fit in 8589934592 bytes of GPU memory"),
    (["--kv-cache-bytes", "1MiB"], "holds no block"),
    (["--gpu-memory", "80GiB", "--context", "9000"], "beyond the model's 8192 tokens"),
    (["--kv-cache-fraction", "0.5"], "needs --gpu-memory"),
])
def test_limits_that_do_not_fit_are_refused(capsys, llama_8b, argv, message):
    status, out, err = run_plan(capsys, "--model", str(llama_8b), *argv)
    assert status == 2 and out == ""
    assert message in err


def test_a_directory_without_config_is_refused(capsys, tmp_path):
    status, _, err = run_plan(capsys, "--model", str(tmp_path))
    assert status == 2
    assert "config.json not found" in err


def test_byte_counts_take_units(capsys, llama_8b):
    small = ["--model", str(llama_8b), "--max-loras", "1", "--max-lora-rank", "8"]
    plan = plan_json(capsys, *small, "--kv-cache-bytes", "2GiB")
    assert plan["kv_budget_bytes"] == 2 * 2**30
    plan = plan_json(capsys, *small, "--kv-cache-bytes", "2G")
    assert plan["kv_budget_bytes"] == 2 * 10**9


def test_plan_needs_no_torch(tmp_path):
    """A laptop without the worker extra can plan: the command imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from lorafleet.dataplane.config import plan; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
