"""Real PEFT LoRA adapters for tiny test checkpoints, with non-zero weights.

PEFT starts lora_B at zero, so a fresh adapter changes nothing; `make_adapter` re-draws A
and B so every adapter visibly changes the model's outputs.
"""

from __future__ import annotations

import pathlib


def make_adapter(
    base_dir: pathlib.Path,
    out_dir: pathlib.Path,
    *,
    r: int,
    alpha: float,
    target_modules: list[str] | str,
    use_rslora: bool = False,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    seed: int = 0,
    init_nonzero: bool = True,
    **lora_options,
) -> pathlib.Path:
    """Builds a PEFT LoRA adapter on the checkpoint at `base_dir`, saves it to `out_dir`.

    `lora_options` go to `peft.LoraConfig` as they are (e.g. use_dora=True,
    modules_to_save=[...]) to build the adapters a loader must refuse.
    """
    import peft
    import torch
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=target_modules,
        use_rslora=use_rslora,
        rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {},
        task_type="CAUSAL_LM",
        **lora_options,
    )
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, config)
    if init_nonzero:
        _randomise_lora(model, seed)
    out_dir = pathlib.Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def _randomise_lora(model, seed: int) -> None:
    """Re-draws lora_A and lora_B so the delta scale * B @ A is clearly non-zero."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:  # lora_A/B, and lora_embedding_A/B
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
