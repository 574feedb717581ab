"""PNG plots of a run's rows: latency against request rate, throughput against distinct
adapters, TTFT CDF by adapter tier. Each is drawn only when its rows are there."""

from __future__ import annotations

import pathlib


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(axis, which: str) -> None:
    """Log-scale ticks as plain numbers (50, 100, 200), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    scale = axis.xaxis if which == "x" else axis.yaxis
    formatter = FuncFormatter(lambda value, _: f"{value:g}")
    scale.set_major_formatter(formatter)
    scale.set_minor_formatter(formatter)


def draw_all(rows: list[dict], directory: pathlib.Path, title: str) -> list[pathlib.Path]:
    """Draws every plot the rows allow into `directory`; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn = []
    for draw in (latency_vs_rate, throughput_vs_adapters, ttft_cdf):
        path = draw(rows, directory, title)
        if path is not None:
            drawn.append(path)
    return drawn


def latency_vs_rate(rows: list[dict], directory: pathlib.Path, title: str):
    """TTFT, TPOT and end-to-end p50/p90/p99 against the offered request rate."""
    rows = sorted((r for r in rows if r.get("preset") == "load" and "rate" in r),
                  key=lambda r: r["rate"])
    if len(rows) < 2:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    for axis, (metric, label) in zip(axes, (("ttft", "time to first token"),
                                            ("tpot", "time per output token"),
                                            ("e2e", "end to end")), strict=True):
        for q, style in ((50, "-o"), (90, "--s"), (99, ":^")):
            axis.plot([r["rate"] for r in rows], [r[f"{metric}_p{q}_ms"] for r in rows],
                      style, label=f"p{q}")
        axis.set(title=label, xlabel="offered load (requests/s, Poisson)", ylabel="ms")
        axis.set_yscale("log")
        _plain_log_ticks(axis, "y")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"latency vs request rate\n{title}", fontsize=9)
    return _save(plt, figure, directory / "serving_latency_vs_rate.png")


def throughput_vs_adapters(rows: list[dict], directory: pathlib.Path, title: str):
    """Output tokens/s of the server, the in-process engine and peft against K."""
    rows = sorted((r for r in rows if r.get("preset") == "adapters"),
                  key=lambda r: r["num_adapters"])
    if not rows:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    spots = range(len(rows))
    for key, label, style in (("output_tok_s", "lorafleet server (gRPC)", "-o"),
                              ("engine_tok_s", "lorafleet engine, in process", "--s"),
                              ("peft_tok_s", "transformers + peft", ":^")):
        values = [r.get(key) for r in rows]
        if all(v is not None for v in values):
            axis.plot(spots, values, style, label=label)
    axis.set_xticks(list(spots), [str(r["num_adapters"]) for r in rows])
    axis.set(xlabel="distinct adapters (concurrency 32; 0 = base model only)",
             ylabel="output tokens/s", ylim=(0, None))
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"throughput vs distinct adapters\n{title}", fontsize=9)
    return _save(plt, figure, directory / "serving_throughput_vs_adapters.png")


def ttft_cdf(rows: list[dict], directory: pathlib.Path, title: str):
    """Empirical CDF of TTFT for device hits (warm), host hits and source loads (cold)."""
    rows = [r for r in rows if r.get("preset") == "cold" and r.get("ttft_samples_ms")]
    if not rows:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        samples = sorted(row["ttft_samples_ms"])
        fractions = [0.0] + [(i + 1) / len(samples) for i in range(len(samples))]
        axis.step([samples[0], *samples], fractions, where="post",
                  label=f"{row['cell']} ({len(samples)} requests)")
    axis.set(xlabel="time to first token (ms)", ylabel="fraction of requests", ylim=(0, 1.02))
    axis.set_xscale("log")
    _plain_log_ticks(axis, "x")
    axis.grid(alpha=0.3)
    axis.legend(title="adapter was in")
    axis.set_title(f"time to first token, cold vs warm adapter (idle worker)\n{title}",
                   fontsize=9)
    return _save(plt, figure, directory / "serving_ttft_cdf.png")


def _save(plt, figure, path: pathlib.Path) -> pathlib.Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
