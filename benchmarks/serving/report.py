"""From a run's results to one report row (throughput, latency percentiles, tiers, errors),
and rows to a printed table."""

from __future__ import annotations

import collections
import math

from benchmarks.serving.load import LoadRun
from benchmarks.serving.observe import REQUEST_TIERS

PERCENTILES = (50, 90, 99)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    spot = (len(ordered) - 1) * q / 100
    low, high = math.floor(spot), math.ceil(spot)
    return ordered[low] + (ordered[high] - ordered[low]) * (spot - low)


def latency_fields(name: str, seconds: list[float]) -> dict:
    """{'<name>_p50_ms': ..., '<name>_p90_ms': ..., '<name>_p99_ms': ...}."""
    return {f"{name}_p{q}_ms": _ms(percentile(seconds, q)) for q in PERCENTILES}


def summarize(run: LoadRun) -> dict:
    """One row: counts, throughput, TTFT/TPOT/end-to-end percentiles, tiers at arrival."""
    results = run.results
    ok = [r for r in results if r.error is None]
    errors = collections.Counter(r.error for r in results if r.error is not None)
    num_tokens = sum(r.num_tokens for r in results)
    tiers = collections.Counter(r.tier for r in results)
    row = {
        "num_requests": len(results), "num_ok": len(ok), "num_errors": sum(errors.values()),
        "errors": dict(errors), "output_tokens": num_tokens,
        "duration_s": round(run.duration, 3),
        "output_tok_s": num_tokens / run.duration if run.duration > 0 else 0.0,
        "req_s": len(ok) / run.duration if run.duration > 0 else 0.0,
        "tiers": {tier: tiers.get(tier, 0) for tier in REQUEST_TIERS},
        "max_send_lag_ms": _ms(run.max_send_lag),
    }
    row.update(latency_fields("ttft", [r.ttft for r in ok if r.ttft is not None]))
    row.update(latency_fields("tpot", [r.tpot for r in ok if r.tpot is not None]))
    row.update(latency_fields("e2e", [r.e2e for r in ok]))
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# (header, row key, format) of the printed table.
COLUMNS = (
    ("cell", "cell", "{}"), ("reqs", "num_requests", "{}"), ("err", "num_errors", "{}"),
    ("tok/s", "output_tok_s", "{:.0f}"), ("req/s", "req_s", "{:.2f}"),
    ("ttft p50", "ttft_p50_ms", "{:.0f}"), ("p90", "ttft_p90_ms", "{:.0f}"),
    ("p99", "ttft_p99_ms", "{:.0f}"), ("tpot p50", "tpot_p50_ms", "{:.1f}"),
    ("p99", "tpot_p99_ms", "{:.1f}"), ("e2e p50", "e2e_p50_ms", "{:.0f}"),
    ("p99", "e2e_p99_ms", "{:.0f}"), ("tiers d/h/s/base/?", "tiers", "tiers"),
    ("loads d/h", "adapter_loads", "loads"), ("evict d/h", "adapter_evictions", "loads"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if fmt == "tiers":
        return "/".join(str(value.get(t, 0)) for t in REQUEST_TIERS)
    if fmt == "loads":
        return f"{value.get('device', 0)}/{value.get('host', 0)}"
    return fmt.format(value)


def print_table(title: str, rows: list[dict], extra: tuple = ()) -> None:
    """Prints `rows` under `title`; `extra` adds (header, key, format) columns."""
    columns = COLUMNS + tuple(extra)
    table = [[header for header, _, _ in columns]]
    table += [[_cell(row, key, fmt) for _, key, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    print(f"\n{title}")
    for line in table:
        print("  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)))
