"""Module names of a Llama-family base model, and which of them an adapter targets.

Pure Python (no torch). Names are the base model's `named_modules()` names, the names PEFT
matches `target_modules`, `rank_pattern` and `alpha_pattern` against.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

from lorafleet.dataplane.adapters.errors import Problem, echo
from lorafleet.dataplane.adapters.peft_config import ALL_LINEAR, AdapterSpec
from lorafleet.dataplane.model.config import PROJECTIONS, ModelConfig

# The module holding each projection inside a decoder layer.
_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
# Linear-like modules outside the decoder layers that LoRA could target but this loader refuses.
EMBEDDING_MODULES = {
    "model.embed_tokens": "LoRA on the embedding (embed_tokens) is not supported",
    "lm_head": "LoRA on lm_head is not supported",
}
# ASCII digits only, and few: int() of a 5,000-digit layer number would raise.
_LAYER_MODULE = re.compile(r"model\.layers\.(\d{1,9})\.(\w+)\.(\w+)", re.ASCII)


@dataclasses.dataclass(frozen=True, order=True)
class ModuleRef:
    """One projection of one decoder layer, e.g. (0, "q_proj")."""

    layer_index: int
    projection: str

    @property
    def name(self) -> str:
        """The module's full name in the base model."""
        return f"model.layers.{self.layer_index}.{_PARENT[self.projection]}.{self.projection}"

    def sort_key(self) -> tuple[int, int]:
        """Layer, then projection in PROJECTIONS order: the canonical module order."""
        return self.layer_index, PROJECTIONS.index(self.projection)


def projection_modules(config: ModelConfig) -> dict[str, ModuleRef]:
    """Every LoRA-capable projection of the base model, by full module name."""
    refs = (ModuleRef(i, p) for i in range(config.num_layers) for p in PROJECTIONS)
    return {ref.name: ref for ref in refs}


def parse_module_name(name: str, config: ModelConfig) -> tuple[ModuleRef | None, Problem | None]:
    """Maps a module name from an adapter to a projection, or says why it has none."""
    if name in EMBEDDING_MODULES:
        return None, Problem(EMBEDDING_MODULES[name])
    match = _LAYER_MODULE.fullmatch(name)
    if match is None or _PARENT.get(match[3]) != match[2]:
        # Layer numbers masked: one message per kind of module, not one per layer.
        generic = re.sub(r"\.\d+\.", ".N.", name)
        return None, Problem(
            f"weights for module {echo(generic)}, which is not a q/k/v/o/gate/up/down projection "
            f"of a {config.architecture} model",
            is_base_model_mismatch=True,
        )
    layer = int(match[1])
    if layer >= config.num_layers:
        return None, Problem(
            f"weights for layer {layer}, but the base model has {config.num_layers} layers",
            is_base_model_mismatch=True,
        )
    return ModuleRef(layer, match[3]), None


def targeted_modules(
    spec: AdapterSpec, config: ModelConfig
) -> tuple[set[ModuleRef], list[Problem]]:
    """The projections `spec.target_modules` selects, matched as PEFT does, minus excludes.

    Entries that select an embedding or lm_head, or nothing at all, are problems.
    """
    projections = projection_modules(config)
    universe = [*projections, *EMBEDDING_MODULES]
    problems: list[Problem] = []
    targets = spec.target_modules
    if targets.regex is not None and targets.regex.lower() == ALL_LINEAR:
        chosen = set(projections)
    elif targets.regex is not None:
        chosen = {name for name in universe if targets.is_match(name)}
        if not chosen:
            problems.append(_matches_nothing(f"target_modules regex {echo(targets.regex)}"))
    else:
        chosen = set()
        for entry, hits in targets.entry_hits(universe).items():
            if not hits:
                problems.append(_matches_nothing(f"target_modules entry {echo(entry)}"))
            chosen |= hits
    excludes = spec.exclude_modules
    if excludes is not None:
        chosen = {name for name in chosen if not excludes.is_match(name)}
    problems += [
        Problem(EMBEDDING_MODULES[name]) for name in sorted(chosen & EMBEDDING_MODULES.keys())
    ]
    return {projections[name] for name in chosen if name in projections}, problems


def _matches_nothing(what: str) -> Problem:
    return Problem(
        f"{what} matches no q/k/v/o/gate/up/down projection of the base model",
        is_base_model_mismatch=True,
    )


def describe_modules(refs) -> str:
    """'q_proj of layers 0-31; v_proj of layer 3:' for a group of modules, in message order."""
    layers: dict[str, list[int]] = defaultdict(list)
    for ref in sorted(refs, key=ModuleRef.sort_key):
        layers[ref.projection].append(ref.layer_index)
    parts = [
        f"{proj} of layer{'s' if len(ids) > 1 else ''} {_runs(ids)}"
        for proj, ids in sorted(layers.items(), key=lambda kv: PROJECTIONS.index(kv[0]))
    ]
    return "; ".join(parts) + ":"


def _runs(ids: list[int]) -> str:
    """'0-3, 7, 9, 10' for sorted layer numbers: runs of three or more are shortened."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(
        f"{run[0]}-{run[-1]}" if len(run) >= 3 else ", ".join(map(str, run)) for run in runs
    )
