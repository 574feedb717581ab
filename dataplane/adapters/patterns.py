"""The one home of "match an adapter-config pattern against module names".

Pure Python (no torch). Patterns come from whoever uploaded the adapter, and every worker
validates every upload, so they run on RE2 (google-re2): linear time, no backtracking.
Python's `re` backtracked for 26.8 s on target_modules "model\\.(.|.)*X", holding the GIL
(every stream stalled, SIGTERM ignored). Matching is PEFT's, with only the engine swapped:

- `target_modules` / `exclude_modules` as a string: a regex matched against the whole
  module name (PEFT's `match_target_against_key`, a `re.fullmatch`);
- as a list: each entry is the whole name or a dotted suffix of it (plain text, no regex);
- `rank_pattern` / `alpha_pattern`: the first key (in file order) whose regex matches a
  dotted suffix of the name, i.e. `(.*\\.)?(KEY)$` matched from the start (PEFT's
  `get_pattern_key`).

Patterns RE2 cannot run (backreferences, lookaround), patterns over MAX_PATTERN_CHARS and
fields with over MAX_NUM_PATTERNS entries are refused (`PatternRefused`), never accepted
and ignored.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Mapping

import re2

from lorafleet.dataplane.adapters.errors import echo

MAX_PATTERN_CHARS = 1024
# Enough for a rank_pattern naming every projection of a 32-layer model (7 x 32 = 224).
MAX_NUM_PATTERNS = 256
# RE2's memory budget per compiled pattern (program and DFA cache). A 1 KiB pattern that
# needs more (huge counted repeats) is refused instead of costing megabytes per pattern.
_MAX_MEM_BYTES = 256 * 1024


class PatternRefused(ValueError):
    """A pattern field the worker will not run; the message names the field."""


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is the uploader's problem, not log noise
    options.max_mem = _MAX_MEM_BYTES
    return options


_OPTIONS = _options()


def is_entry_match(entry: str, name: str) -> bool:
    """PEFT's rule for a list entry: the full name, or a dotted suffix of it."""
    return name == entry or name.endswith(f".{entry}")


@dataclasses.dataclass(frozen=True)
class NameRule:
    """`target_modules` or `exclude_modules`: a list of names, or one full-match regex."""

    names: tuple[str, ...] = ()
    regex: str | None = None
    _compiled: object = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def compile(cls, field: str, value: str | Iterable[str]) -> NameRule:
        """The rule for `value` (a regex string or a list of names); raises PatternRefused."""
        if isinstance(value, str):
            return cls(regex=value, _compiled=_compile(field, "regex", value, value))
        names = tuple(value)
        _check_count(field, names)
        for name in names:
            _check_length(field, "entry", name)
        return cls(names=names)

    def is_match(self, name: str) -> bool:
        """Whether the rule selects the module `name`."""
        if self._compiled is not None:
            return self._compiled.fullmatch(name) is not None
        return any(is_entry_match(entry, name) for entry in self.names)

    def entry_hits(self, names: Iterable[str]) -> dict[str, set[str]]:
        """For the list form: the module names each entry selects (empty for a regex)."""
        names = list(names)
        return {entry: {n for n in names if is_entry_match(entry, n)} for entry in self.names}


@dataclasses.dataclass(frozen=True)
class PatternMap:
    """`rank_pattern` or `alpha_pattern`: a value per key; the first matching key wins."""

    values: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    _compiled: tuple = dataclasses.field(default=(), repr=False, compare=False)

    @classmethod
    def compile(cls, field: str, values: Mapping[str, float]) -> PatternMap:
        """The map for `values` (key regex -> number); raises PatternRefused."""
        keys = list(values)
        _check_count(field, keys)
        compiled = tuple(_compile(field, "key", key, rf"(.*\.)?({key})$") for key in keys)
        return cls(types.MappingProxyType(dict(values)), compiled)

    def first_key(self, name: str) -> str | None:
        """The first key whose regex matches a dotted suffix of `name`, or None."""
        text = name.encode()  # once, rather than once per key inside re2
        for key, regex in zip(self.values, self._compiled, strict=True):
            if regex.match(text) is not None:
                return key
        return None

    def value_for(self, name: str, default: float) -> float:
        """The value of the first key matching `name`, else `default`."""
        key = self.first_key(name)
        return default if key is None else self.values[key]


def _check_count(field: str, patterns: list | tuple) -> None:
    if len(patterns) > MAX_NUM_PATTERNS:
        raise PatternRefused(
            f"{field} has {len(patterns)} patterns; at most {MAX_NUM_PATTERNS} patterns are allowed"
        )


def _check_length(field: str, kind: str, text: str) -> None:
    if len(text) > MAX_PATTERN_CHARS:
        raise PatternRefused(
            f"{field} {kind} {echo(text)} has {len(text)} characters; at most "
            f"{MAX_PATTERN_CHARS} characters are allowed"
        )


def _compile(field: str, kind: str, text: str, regex: str):
    """RE2's compiled `regex`, built from the uploader's `text`; raises PatternRefused."""
    _check_length(field, kind, text)
    try:
        return re2.compile(regex, _OPTIONS)
    except re2.error as exc:
        why = exc.args[0] if exc.args else exc
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        raise PatternRefused(
            f"{field} {kind} {echo(text)} is not a valid regular expression for RE2 "
            f"({echo(why)}); adapter patterns may not use backreferences or lookaround"
        ) from exc
