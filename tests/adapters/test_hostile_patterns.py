"""Patterns from an adapter config run without backtracking, within bounds, as PEFT reads them.

Python's `re` backtracked for 26.8 s on target_modules "model\\.(.|.)*X" and for over a
minute on "(.|.)*X", holding the GIL (every stream stalled, SIGTERM ignored).
"""

from __future__ import annotations

import time

import pytest

from lorafleet.dataplane.adapters import AdapterInvalid, BaseModelMismatch
from lorafleet.dataplane.adapters.loader import validate_adapter
from tests.adapters.conftest import copy_adapter

# The documented bounds (docs/worker.md); literal here so the test runs against any code.
MAX_PATTERN_CHARS = 1024
MAX_NUM_PATTERNS = 256
BACKTRACKERS = ["model\\.(.|.)*X", "(.|.)*X"]
# Where each field puts a pattern: target_modules and exclude_modules strings are regexes,
# rank_pattern and alpha_pattern keys are regexes.
PLACES = {
    "target_modules": lambda p: {"target_modules": p},
    "exclude_modules": lambda p: {"exclude_modules": p},
    "rank_pattern": lambda p: {"rank_pattern": {p: 2}},
    "alpha_pattern": lambda p: {"alpha_pattern": {p: 2}},
}


@pytest.mark.timeout(60)  # today's `re` would hang for minutes; fail instead
def test_backtracking_patterns_are_handled_at_once(plain_adapter, model_config, tmp_path):
    adapters = {
        (field, pattern): copy_adapter(
            plain_adapter, tmp_path / f"{field}{i}", config_changes=place(pattern)
        )
        for field, place in PLACES.items()
        for i, pattern in enumerate(BACKTRACKERS)
    }
    started = time.thread_time()  # CPU time: a busy machine cannot fail it, a hang would
    reports = {
        key: validate_adapter(str(path), model_config, max_lora_rank=8)
        for key, path in adapters.items()
    }
    elapsed = time.thread_time() - started
    assert elapsed < 1.0, f"{len(reports)} validations took {elapsed:.2f} s"
    for (field, pattern), report in reports.items():
        if field == "target_modules":  # selects nothing, so the adapter's weights are orphans
            assert not report.is_valid
            assert f"target_modules regex {pattern!r} matches no" in report.reasons[0]
        else:  # matches no module: the adapter is unchanged and valid
            assert report.is_valid, (field, report.reasons)


@pytest.mark.parametrize(
    "pattern",
    [r"(q)\1_proj", r"(?=q)q_proj", r"(?<!k)q_proj"],
    ids=["backreference", "lookahead", "lookbehind"],
)
@pytest.mark.parametrize("field", sorted(PLACES))
def test_patterns_re2_cannot_run_are_refused(field, pattern, plain_adapter, model_config, tmp_path):
    changed = copy_adapter(plain_adapter, tmp_path / "a", config_changes=PLACES[field](pattern))
    report = validate_adapter(str(changed), model_config, max_lora_rank=8)
    assert not report.is_valid and not report.is_base_model_mismatch
    assert report.digest is None
    (reason,) = [r for r in report.reasons if field in r]
    assert "not a valid regular expression for RE2" in reason and "backreferences" in reason
    with pytest.raises(AdapterInvalid) as info:
        report.raise_if_invalid()
    assert not isinstance(info.value, BaseModelMismatch)  # INVALID_ARGUMENT, field named


def test_pattern_length_and_count_are_bounded(plain_adapter, model_config, tmp_path):
    long = "q_proj|" * (MAX_PATTERN_CHARS // 7) + "v_proj"
    many_keys = {f"layers\\.{i}\\.self_attn\\.q_proj": 2 for i in range(MAX_NUM_PATTERNS + 1)}
    many_names = ["q_proj", "v_proj"] + [f"x{i}" for i in range(MAX_NUM_PATTERNS)]
    cases = {
        "target_modules": {"target_modules": long},
        "rank_pattern": {"rank_pattern": many_keys},
        "alpha_pattern": {"alpha_pattern": {long: 2}},
        "exclude_modules": {"exclude_modules": many_names},
    }
    for field, changes in cases.items():
        changed = copy_adapter(plain_adapter, tmp_path / field, config_changes=changes)
        report = validate_adapter(str(changed), model_config, max_lora_rank=8)
        assert not report.is_base_model_mismatch, report.reasons
        reason = next(r for r in report.reasons if r.startswith(field))
        assert f"at most {MAX_PATTERN_CHARS} characters" in reason or (
            f"at most {MAX_NUM_PATTERNS} patterns" in reason
        ), reason
        assert len(reason) < 400  # the pattern itself is echoed cut short


def test_just_under_the_bounds_is_accepted(plain_adapter, model_config, tmp_path):
    keys = {f"layers\\.{i}\\.self_attn\\.q_proj": 2 for i in range(MAX_NUM_PATTERNS - 1)}
    keys["v_" + "p?" * ((MAX_PATTERN_CHARS - 20) // 2) + "proj"] = 3
    changed = copy_adapter(plain_adapter, tmp_path / "a", config_changes={"alpha_pattern": keys})
    assert validate_adapter(str(changed), model_config, max_lora_rank=8).is_valid
