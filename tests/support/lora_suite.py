"""A tiny base model with eight varied PEFT adapters, and peft/transformers references.

The adapters mix ranks 8, 16 and 64, different target-module subsets, rsLoRA, and
alpha != r, as real fleets do.
"""

from __future__ import annotations

import pathlib

from tests.support.tiny_adapters import make_adapter
from tests.support.tiny_models import make_checkpoint

# name -> make_adapter options
ADAPTER_SPECS = {
    "acme/qv8": dict(r=8, alpha=16, target_modules=["q_proj", "v_proj"]),
    "acme/all16": dict(r=16, alpha=16, target_modules="all-linear"),
    "acme/attn64": dict(r=64, alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "beta/mlp-rslora": dict(r=8, alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"],
                            use_rslora=True),
    "beta/ko16": dict(r=16, alpha=8, target_modules=["k_proj", "o_proj"]),
    "beta/q8": dict(r=8, alpha=8, target_modules=["q_proj"]),
    "gamma/down16": dict(r=16, alpha=32, target_modules=["down_proj"]),
    "gamma/all64": dict(r=64, alpha=64, target_modules="all-linear"),
}
NUM_NEW_TOKENS = 10


def make_suite(root: pathlib.Path) -> tuple[pathlib.Path, dict[str, pathlib.Path]]:
    """Writes the base checkpoint and the adapters under `root`."""
    base = make_checkpoint(root / "base", "llama-gqa")
    adapters = {}
    for index, (name, spec) in enumerate(ADAPTER_SPECS.items()):
        adapters[name] = make_adapter(base, root / name.replace("/", "__"), seed=index, **spec)
    return base, adapters


def prompts(count: int) -> list[list[int]]:
    """Deterministic prompts of varied lengths over ordinary token ids."""
    return [[10 + (i * 41 + j * 13) % 350 for j in range(3 + (i * 7) % 30)] for i in range(count)]


class PeftReference:
    """Greedy continuations from transformers (base) or peft (adapter), one at a time."""

    def __init__(self, base: pathlib.Path, adapters: dict[str, pathlib.Path]):
        self.base, self.adapters = base, adapters
        self._models: dict = {}
        self._results: dict = {}

    def _model(self, adapter: str | None):
        import peft
        import torch
        import transformers

        if adapter not in self._models:
            model = transformers.AutoModelForCausalLM.from_pretrained(self.base, dtype=torch.float32)
            if adapter is not None:
                model = peft.PeftModel.from_pretrained(model, self.adapters[adapter])
            self._models[adapter] = model.eval()
        return self._models[adapter]

    def greedy(self, adapter: str | None, prompt: list[int],
               max_new_tokens: int = NUM_NEW_TOKENS) -> list[int]:
        """The reference's greedy tokens (stopping at EOS, like the engine)."""
        import torch

        key = (adapter, tuple(prompt), max_new_tokens)
        if key not in self._results:
            out = self._model(adapter).generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
            self._results[key] = out[0, len(prompt):].tolist()
        return self._results[key]
