"""`adapter_config.json` of a PEFT LoRA adapter: what is honoured, what is refused and why.

Pure Python (no torch). Options are checked against an allow-list: an option this loader
does not know, set to anything but its off value, is refused by name rather than ignored,
so a future PEFT feature that changes the math can never be served half-applied.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib

from lorafleet.dataplane.adapters.bounded_json import JsonRefused, read_json_file
from lorafleet.dataplane.adapters.errors import Problem, echo
from lorafleet.dataplane.adapters.patterns import NameRule, PatternMap, PatternRefused

CONFIG_FILE = "adapter_config.json"
ALL_LINEAR = "all-linear"
# A real adapter_config.json is a few KB; a bigger one is refused before it is read.
MAX_CONFIG_BYTES = 1024 * 1024
log = logging.getLogger(__name__)

# Options honoured by the loader (read into AdapterSpec or checked).
# fmt: off
_HONOURED = frozenset({
    "r", "lora_alpha", "use_rslora", "target_modules", "exclude_modules", "rank_pattern",
    "alpha_pattern", "fan_in_fan_out", "base_model_name_or_path", "auto_mapping", "peft_type",
    "bias", "task_type", "init_lora_weights",
})
# Options that only matter while training or for bookkeeping: the saved weights say it all.
_INERT = frozenset({
    "revision", "inference_mode", "lora_dropout", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "megatron_core", "peft_version", "qalora_group_size", "layers_pattern",
    "ensure_weight_tying", "runtime_config",
})
# fmt: on
# Refused options with a reason worth more than the generic message.
_REFUSED_WHY = {
    "use_dora": "DoRA (use_dora) is not supported: it rescales the merged weight per column",
    "modules_to_save": "modules_to_save is not supported: it replaces whole base-model modules",
    "layers_to_transform": "layers_to_transform is not supported: adapters must cover every layer",
    "lora_bias": "lora_bias is not supported: lora_B has no bias here",
    "trainable_token_indices": "trainable_token_indices is not supported: it changes embeddings",
    "layer_replication": "layer_replication is not supported: it changes the base model's layers",
    "target_parameters": "target_parameters is not supported: only linear modules take LoRA",
}
# init_lora_weights values whose adapters expect a base model modified at init time.
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")
_CAUSAL_LM_TASKS = (None, "CAUSAL_LM")


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """The parts of adapter_config.json that decide the LoRA math."""

    r: int
    lora_alpha: float
    use_rslora: bool
    # Names (matched as PEFT does: exact or a ".name" suffix) or one regex; patterns.py.
    target_modules: NameRule
    exclude_modules: NameRule | None
    rank_pattern: PatternMap
    alpha_pattern: PatternMap
    # Tensors stored transposed (lora_A as [in, r], lora_B as [r, out]), the layout of
    # fan-in/fan-out (Conv1D-style) weights; transposed back on load. PEFT itself resets
    # the flag to False on nn.Linear projections, so its Llama adapters arrive with False.
    fan_in_fan_out: bool
    base_model_name_or_path: str | None
    # `auto_mapping.base_model_class` (e.g. "LlamaForCausalLM") when PEFT recorded it.
    base_model_class: str | None

    def rank_for(self, module_name: str) -> int:
        """Rank of the full module name (e.g. "model.layers.0.self_attn.q_proj")."""
        return int(self.rank_pattern.value_for(module_name, self.r))

    def alpha_for(self, module_name: str) -> float:
        """lora_alpha of the full module name."""
        return float(self.alpha_pattern.value_for(module_name, self.lora_alpha))

    def scale_for(self, module_name: str) -> float:
        """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        rank = self.rank_for(module_name)
        divisor = math.sqrt(rank) if self.use_rslora else rank
        return self.alpha_for(module_name) / divisor


def read_adapter_config(directory: pathlib.Path) -> tuple[AdapterSpec | None, list[Problem]]:
    """Reads and checks `directory/adapter_config.json`; returns the spec or the problems."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return None, [Problem(f"{CONFIG_FILE} is missing: not a PEFT adapter directory")]
    try:
        raw = read_json_file(path, max_bytes=MAX_CONFIG_BYTES, what=CONFIG_FILE)
    except JsonRefused as exc:
        return None, [Problem(str(exc))]
    except OSError as exc:  # the path and OS error are for the operator, not the caller
        log.warning("cannot read %s: %s", path, exc)
        return None, [Problem(f"{CONFIG_FILE} is not readable")]
    if not isinstance(raw, dict):
        return None, [Problem(f"{CONFIG_FILE} must hold a JSON object")]
    return parse_adapter_config(raw)


def parse_adapter_config(raw: dict) -> tuple[AdapterSpec | None, list[Problem]]:
    """Checks a parsed adapter_config.json; returns the spec and every problem.

    The spec is None only when the config is malformed; refused options still yield one,
    so the weights can be checked too and every reason reported at once.
    """
    malformed: list[Problem] = []
    r = raw.get("r", 8)
    alpha = raw.get("lora_alpha", 8)
    if not _is_positive_int(r):
        malformed.append(Problem(f"r must be a positive integer, got {echo(r)}"))
    if not _is_number(alpha):
        malformed.append(Problem(f"lora_alpha must be a number, got {echo(alpha)}"))
    targets = _name_rule(raw.get("target_modules"), "target_modules", malformed)
    excludes = _name_rule(raw.get("exclude_modules"), "exclude_modules", malformed)
    rank_pattern = _pattern(raw.get("rank_pattern"), "rank_pattern", _is_positive_int, malformed)
    alpha_pattern = _pattern(raw.get("alpha_pattern"), "alpha_pattern", _is_number, malformed)
    if raw.get("target_modules") is None:
        malformed.append(Problem("target_modules is missing: the adapter names no module"))
    problems = _refusals(raw) + malformed
    if malformed:
        return None, problems
    spec = AdapterSpec(
        r=int(r),
        lora_alpha=float(alpha),
        use_rslora=bool(raw.get("use_rslora", False)),
        target_modules=targets,
        exclude_modules=excludes,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        base_model_name_or_path=_text_or_none(raw.get("base_model_name_or_path")),
        base_model_class=_text_or_none(_get(raw.get("auto_mapping"), "base_model_class")),
    )
    return spec, problems


def _refusals(raw: dict) -> list[Problem]:
    """Problems with the adapter type and with options that are set but not supported."""
    problems = []
    peft_type = raw.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(
            Problem(f"peft_type {echo(peft_type)} is not supported: only LORA adapters")
        )
    bias = raw.get("bias", "none")
    if bias != "none":
        problems.append(Problem(f"bias={echo(bias)} is not supported: it trains base-model biases"))
    task = raw.get("task_type")
    if task not in _CAUSAL_LM_TASKS:
        problems.append(
            Problem(
                f"task_type {echo(task)} is for another model head; only CAUSAL_LM adapters "
                "are served",
                is_base_model_mismatch=True,
            )
        )
    init = str(raw.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_MODIFYING_INITS):
        problems.append(
            Problem(
                f"init_lora_weights={echo(init)} adapters expect a base model modified at init; "
                "convert it with save_pretrained(path_initial_model_for_weight_conversion=...)"
            )
        )
    for key in sorted(raw.keys() - _HONOURED - _INERT):
        if _is_set(raw[key]):
            problems.append(
                Problem(
                    _REFUSED_WHY.get(
                        key,
                        f"PEFT option {echo(key, is_quoted=False)}={echo(raw[key])} is not supported",
                    )
                )
            )
    return problems


def _name_rule(value, field: str, problems: list[Problem]) -> NameRule | None:
    """target_modules or exclude_modules as a rule; a malformed one is a problem."""
    if value is None:
        return None
    if not isinstance(value, str) and not (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    ):
        problems.append(
            Problem(f"{field} must be a list of names or a regex string, got {echo(value)}")
        )
        return None
    try:
        return NameRule.compile(field, value)
    except PatternRefused as exc:
        problems.append(Problem(str(exc)))
        return None


def _pattern(value, field: str, is_valid, problems: list[Problem]) -> PatternMap:
    """rank_pattern or alpha_pattern as a PatternMap; a malformed one is a problem."""
    if not value:
        return PatternMap()
    if not isinstance(value, dict) or not all(is_valid(v) for v in value.values()):
        problems.append(Problem(f"{field} must map module patterns to numbers, got {echo(value)}"))
        return PatternMap()
    try:
        return PatternMap.compile(field, value)
    except PatternRefused as exc:
        problems.append(Problem(str(exc)))
        return PatternMap()


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _get(value, key: str):
    """`value[key]` when `value` is a JSON object holding it, else None."""
    return value.get(key) if isinstance(value, dict) else None


def _is_set(value) -> bool:
    """Whether an option is switched on (anything but null, false, empty or 'none')."""
    return value not in (None, False, "", "none") and value != [] and value != {}


def _is_positive_int(value) -> bool:
    # Below 2**31: no real rank comes near, and a 4,000-digit "rank" stays out of messages.
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
