"""The gpu-check report: time caps, target verdicts, and the JSON and markdown files."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

MET, NOT_MET, SKIPPED = "met", "not met", "skipped"
DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[1] / "results" / "gpu"


def report_dir() -> pathlib.Path:
    """$OUT when set (the GPU machine's tool collects it), else benchmarks/results/gpu/."""
    return pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_DIR


def target(name: str, value: float | None, limit: float, *, is_upper_bound: bool,
           unit: str = "x", note: str = "") -> dict:
    """A target's verdict: met when value <= limit (upper bound) or >= limit; skipped
    when there is no value (the note says why)."""
    goal = f"{'<=' if is_upper_bound else '>='} {limit:g}{unit}"
    if value is None:
        status = SKIPPED
    else:
        is_met = value <= limit if is_upper_bound else value >= limit
        status = MET if is_met else NOT_MET
    return {"name": name, "goal": goal, "value": value, "status": status, "note": note}


def outcome(clock: PartClock) -> str:
    """A check's status when nothing failed: "passed", or "partial" when the cap cut
    some of it (the report lists what was left out)."""
    return "partial" if clock.skipped else "passed"


class PartClock:
    """One part's time cap inside the whole run's: a step starts only if its estimate fits."""

    def __init__(self, cap_s: float, run_deadline: float) -> None:
        self.started = time.monotonic()
        self.deadline = min(self.started + cap_s, run_deadline)
        self.cap_s = cap_s
        self.skipped: list[str] = []

    def can_start(self, estimate_s: float) -> bool:
        """Whether a step expected to take `estimate_s` ends before the cap."""
        return time.monotonic() + estimate_s <= self.deadline

    def skip(self, what: str) -> None:
        """Records a step left out because it would overrun the cap."""
        self.skipped.append(f"{what}: skipped, it would overrun the {self.cap_s:.0f} s cap")

    def elapsed(self) -> float:
        """Seconds since the part started."""
        return time.monotonic() - self.started


@dataclasses.dataclass
class Report:
    """Everything one run found: the mode ("cuda" or "cpu dry run"), the machine, and one
    dict per part (name, status, seconds, rows, targets, skipped steps, notes)."""

    mode: str
    machine: dict
    parts: list[dict] = dataclasses.field(default_factory=list)

    def targets(self) -> list[dict]:
        """Every part's targets, each with its part's name."""
        return [{"part": p["name"], **t} for p in self.parts for t in p.get("targets", [])]

    def is_passed(self) -> bool:
        """No part failed or broke (targets not met and steps cut by a cap do not count:
        they are findings, listed in the report)."""
        return all(p["status"] in ("passed", "partial", "done", "skipped") for p in self.parts)

    def to_json(self) -> dict:
        """The whole report as one JSON-able dict."""
        return {"mode": self.mode, "machine": self.machine, "is_passed": self.is_passed(),
                "parts": self.parts, "targets": self.targets()}

    def to_markdown(self) -> str:
        """A summary: one line per part, then one per target, then each part's table."""
        lines = [f"# gpu-check ({self.mode})", "", _machine_line(self.machine), "",
                 "| part | status | seconds | notes |", "| --- | --- | --- | --- |"]
        for part in self.parts:
            notes = "; ".join(part.get("notes", []) + part.get("skipped", []))
            lines.append(f"| {part['name']} | {part['status']} | {part['seconds']:.1f} | {notes} |")
        lines += ["", "| target | goal | value | verdict | note |", "| --- | --- | --- | --- | --- |"]
        for t in self.targets():
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            lines.append(f"| {t['part']}: {t['name']} | {t['goal']} | {value} | {t['status']} "
                         f"| {t['note']} |")
        for part in self.parts:
            if part.get("rows"):
                lines += ["", f"## {part['name']}", "", *markdown_table(part["rows"])]
        return "\n".join(lines) + "\n"


def markdown_table(rows: list[dict]) -> list[str]:
    """Rows of dicts as a markdown table; columns in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        out.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return out


def write_report(report: Report, directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes report.json and report.md into `directory`; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "report.json", directory / "report.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    md_path.write_text(report.to_markdown())
    return json_path, md_path


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _machine_line(machine: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in machine.items())
