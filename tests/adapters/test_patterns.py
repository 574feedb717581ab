"""RE2 matching gives PEFT's answers: same rules, only the regex engine is swapped."""

from __future__ import annotations

import pytest
from peft.utils.other import get_pattern_key, match_target_against_key

from lorafleet.dataplane.adapters.modules import EMBEDDING_MODULES, projection_modules
from lorafleet.dataplane.adapters.patterns import (
    MAX_NUM_PATTERNS,
    MAX_PATTERN_CHARS,
    NameRule,
    PatternMap,
    PatternRefused,
)

REGEXES = [
    r".*\.(q_proj|v_proj)",
    r"model\.layers\.1\..*",
    r"q_proj",
    r".*mlp\.(up|down)_proj|lm_head",
    r"a|model\.layers\.0\.self_attn\.q_proj",
    r"(?i)MODEL\.LAYERS\.0\..*",
    r"layers\.\d+\.mlp\..*",
    r"self_attn\.[qk]_proj",
    r"^model\.layers\.0\.mlp\.down_proj",
    r"model.layers.1.self_attn.o_proj",  # unescaped dots: any character, as in PEFT
]
# rank_pattern keys PEFT wraps as (.*\.)?(KEY)$: one that closes PEFT's group is kept as is.
# (A mid-pattern "(?i)" is left out: Python's re refuses it there, RE2 accepts it.)
KEYS = [*(r for r in REGEXES if "(?i)" not in r), r"q_proj)|(v_proj", r"layers\.0\..*"]


@pytest.fixture(scope="module")
def module_names(model_config) -> list[str]:
    """Every module name a pattern is matched against: projections, embedding, lm_head."""
    return [*projection_modules(model_config), *EMBEDDING_MODULES]


@pytest.mark.parametrize("regex", REGEXES)
def test_string_target_is_peft_full_match(regex, module_names):
    rule = NameRule.compile("target_modules", regex)
    for name in module_names:
        assert rule.is_match(name) == bool(match_target_against_key(regex, name)), name


@pytest.mark.parametrize("first", KEYS)
def test_pattern_keys_pick_peft_key(first, module_names):
    keys = [first, "k_proj", r"layers\.1\..*"]
    patterns = PatternMap.compile("rank_pattern", dict.fromkeys(keys, 2))
    for name in module_names:
        expected = get_pattern_key(keys, name)  # PEFT returns the name itself for no match
        is_miss = expected == name and name not in keys
        assert patterns.first_key(name) == (None if is_miss else expected), name


def test_first_key_in_file_order_wins():
    patterns = PatternMap.compile("alpha_pattern", {"q_proj": 3, r"layers\.0\..*": 5})
    assert patterns.value_for("model.layers.0.self_attn.q_proj", 8) == 3
    assert patterns.value_for("model.layers.0.self_attn.v_proj", 8) == 5
    assert patterns.value_for("model.layers.1.self_attn.v_proj", 8) == 8


def test_name_lists_match_whole_names_or_dotted_suffixes(module_names):
    rule = NameRule.compile("target_modules", ["q_proj", "layers.1.mlp.up_proj", "elf_attn.k_proj"])
    assert {name for name in module_names if rule.is_match(name)} == {
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.up_proj",
    }
    assert rule.entry_hits(module_names)["elf_attn.k_proj"] == set()  # not a dotted suffix


def test_entries_are_text_not_regexes(module_names):
    rule = NameRule.compile("exclude_modules", [r".*_proj", "(v_proj"])  # never compiled
    assert not any(rule.is_match(name) for name in module_names)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: NameRule.compile("target_modules", "x" * (MAX_PATTERN_CHARS + 1)), "characters"),
        (lambda: NameRule.compile("exclude_modules", ["q"] * (MAX_NUM_PATTERNS + 1)), "patterns"),
        (lambda: PatternMap.compile("rank_pattern", {"(q_proj": 2}), "missing )"),
        (lambda: PatternMap.compile("alpha_pattern", {r"(?=q)": 2}), "RE2"),
        (lambda: NameRule.compile("target_modules", r"(?:.{1,1000}){1,1000}"), "RE2"),
        (lambda: NameRule.compile("target_modules", r"\p{L}{1000}"), "too large"),
    ],
    ids=["long", "many", "invalid", "lookahead", "huge_repeat", "too_much_memory"],
)
def test_refusals_name_the_field(build, expected):
    with pytest.raises(PatternRefused) as info:
        build()
    message = str(info.value)
    assert message.split()[0] in (
        "target_modules",
        "exclude_modules",
        "rank_pattern",
        "alpha_pattern",
    )
    assert expected in message and len(message) < 400, message
