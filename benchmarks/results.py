"""Where benchmarks put their numbers: one JSON line per result row, in
benchmarks/results/<benchmark>.jsonl, stamped with the time and the machine."""

from __future__ import annotations

import datetime
import json
import pathlib
import platform

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def append_rows(benchmark: str, rows: list[dict], **common) -> pathlib.Path:
    """Appends `rows` (each merged with `common`) to the benchmark's JSON-lines file."""
    path = RESULTS_DIR / f"{benchmark}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    header = {"benchmark": benchmark, "time": stamp, "machine": platform.machine(),
              "cpu": platform.processor()}
    with path.open("a") as out:
        for row in rows:
            out.write(json.dumps({**header, **common, **row}) + "\n")
    return path
