"""Tensor names of a PEFT LoRA weights file, mapped to (projection, lora_A or lora_B).

Pure Python. PEFT saves a LoRA weight of module M of a causal LM as
`base_model.model.<M>.lora_A.weight` (and `lora_B`), without the adapter's name.
"""

from __future__ import annotations

import re

from lorafleet.dataplane.adapters.errors import Problem, echo
from lorafleet.dataplane.adapters.modules import ModuleRef, parse_module_name
from lorafleet.dataplane.model.config import ModelConfig

LORA_A = "lora_A"
LORA_B = "lora_B"
_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.(?P<kind>lora_[AB])\.weight")
# Tensors of PEFT features this loader refuses, and why.
_REFUSED_TENSORS = (
    (
        re.compile(r".*\.lora_embedding_[AB](\.\w+)?"),
        "embedding LoRA (lora_embedding_A/B) is not supported",
    ),
    (
        re.compile(r".*\.lora_magnitude_vector(\.\w+)?"),
        "DoRA (lora_magnitude_vector) is not supported",
    ),
    (re.compile(r".*\.lora_[AB]\.bias"), "lora_bias is not supported: lora_B has no bias here"),
    (
        re.compile(r".*\.modules_to_save\..*|.*\.original_module\..*"),
        "modules_to_save is not supported: it replaces whole base-model modules",
    ),
    (
        re.compile(r".*\.base_layer\..*"),
        "the file holds base-model weights (base_layer), which an adapter may not replace",
    ),
)


def pair_weight_keys(
    names: list[str],
    config: ModelConfig,
) -> tuple[dict[ModuleRef, dict[str, str]], list[Problem]]:
    """Groups tensor names by projection: {ref: {"lora_A": name, "lora_B": name}}.

    A name that is not a LoRA weight of a projection of this base model is a problem, so no
    part of an adapter is ever dropped silently.
    """
    pairs: dict[ModuleRef, dict[str, str]] = {}
    problems: list[Problem] = []
    for name in sorted(names):
        refused = next((why for pattern, why in _REFUSED_TENSORS if pattern.fullmatch(name)), None)
        match = _KEY.fullmatch(name)
        if refused is not None or match is None:
            problems.append(
                Problem(
                    refused
                    or f"tensor {echo(name)} is not a LoRA weight (lora_A/lora_B) of a module; "
                    "an adapter may not carry base-model weights"
                )
            )
            continue
        ref, problem = parse_module_name(match["module"], config)
        if problem is not None:
            problems.append(problem)
            continue
        pairs.setdefault(ref, {})[match["kind"]] = name
    return pairs, _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Drops repeats of one refusal (e.g. one per layer), keeping the first's order."""
    return list(dict.fromkeys(problems))
