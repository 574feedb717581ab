"""A generated demo: a small Llama-family checkpoint and three PEFT adapters for it.

No model hub is needed: weights are random (seeded), so the text is not meaningful, but
every path a real checkpoint takes — config.json, safetensors, tokenizer.json with a chat
template, PEFT adapter directories — is exercised. `lorafleet up` serves this demo.
"""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors.torch import save_file

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB_SIZE = 384
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving many LoRA adapters on one base model saves GPUs.",
    "Hello world! Multi-tenant inference with adapters, caches and kernels.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation: ,.;:!?()[]{}",
    "Unicode: café, naïve, 東京, emoji 🙂 and more text for the tokenizer.",
] * 20

# name -> (rank, alpha, target modules, rslora)
DEMO_ADAPTERS = {
    "demo/pirate": (8, 16, ["q_proj", "v_proj"], False),
    "demo/legal": (16, 16, "all-linear", False),
    "demo/poet": (4, 8, ["q_proj", "k_proj", "v_proj", "o_proj"], True),
}
_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_tokenizer(directory: pathlib.Path) -> None:
    """Trains a small byte-level BPE tokenizer (deterministic) into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _model_config(hidden: int, num_layers: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": hidden * 2, "num_hidden_layers": num_layers,
        "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "float32",
    }


def write_model(directory: pathlib.Path, *, hidden: int = 256, num_layers: int = 4,
                seed: int = 0) -> pathlib.Path:
    """Writes a random Llama checkpoint (config.json, model.safetensors, tokenizer)."""
    config = _model_config(hidden, num_layers)
    gen = torch.Generator().manual_seed(seed)
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    inter = config["intermediate_size"]

    def rand(*shape):
        return torch.randn(shape, generator=gen) * 0.08

    tensors = {"model.embed_tokens.weight": rand(VOCAB_SIZE, hidden),
               "model.norm.weight": torch.ones(hidden), "lm_head.weight": rand(VOCAB_SIZE, hidden)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": rand(hidden, hidden),
            p + "self_attn.k_proj.weight": rand(kv, hidden),
            p + "self_attn.v_proj.weight": rand(kv, hidden),
            p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "mlp.gate_proj.weight": rand(inter, hidden),
            p + "mlp.up_proj.weight": rand(inter, hidden),
            p + "mlp.down_proj.weight": rand(hidden, inter),
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
        })
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(directory)
    return directory


def write_adapter(directory: pathlib.Path, model_dir: pathlib.Path, *, rank: int, alpha: int,
                  target_modules, use_rslora: bool = False, seed: int = 0) -> pathlib.Path:
    """Writes a PEFT LoRA adapter directory with random, non-zero A and B."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = hidden // config["num_attention_heads"]
    kv, inter = config["num_key_value_heads"] * head_dim, config["intermediate_size"]
    shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
              "o_proj": (hidden, hidden), "gate_proj": (hidden, inter),
              "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    modules = _ALL_LINEAR if target_modules == "all-linear" else list(target_modules)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(layers):
        for proj in modules:
            group = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{i}.{group}.{proj}"
            in_f, out_f = shapes[proj]
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.1
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "target_modules": target_modules, "use_rslora": use_rslora, "bias": "none",
        "fan_in_fan_out": False, "lora_dropout": 0.0, "base_model_name_or_path": str(model_dir),
    }
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
    return directory


def ensure_demo(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
    """Writes the demo model and adapters under `root` unless present; returns their paths."""
    model_dir = root / "model"
    if not (model_dir / "config.json").exists():
        write_model(model_dir)
    adapters = {}
    for index, (name, (rank, alpha, targets, rslora)) in enumerate(DEMO_ADAPTERS.items()):
        path = root / "adapters" / name.replace("/", "__")
        if not (path / "adapter_config.json").exists():
            write_adapter(path, model_dir, rank=rank, alpha=alpha, target_modules=targets,
                          use_rslora=rslora, seed=100 + index)
        adapters[name] = path
    return model_dir, adapters
