"""The vLLM comparison without vLLM: its report against issue 11's recorded numbers (clearly
labelled), and its side-interpreter protocol driven by a stand-in for vLLM's interpreter
(a small script that answers as run_vllm.py does). No test needs vLLM or a network."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import threading

import pytest

from benchmarks import vllm_compare
from benchmarks.serving.checkpoint import ModelShape
from benchmarks.serving.references import on_thread
from benchmarks.vllm_side import protocol, table

SHAPE = ModelShape(64, 2, 4, 2, 128, 384)  # stands in for tiny: seconds, not minutes
FAKE = """\
#!{python}
# Stands in for vLLM's interpreter: ignores the script it is given and answers the job
# on stdin as run_vllm.py would, as FAKE_MODE says.
import json, os, sys, time
job = json.loads(sys.stdin.read())
mode = os.environ.get("FAKE_MODE", "ok")
say = lambda event: print("LORAFLEET_SIDE " + json.dumps(event), flush=True)
print("INFO some vLLM log line", flush=True)
if mode == "hang":
    time.sleep(60)
if mode == "crash":
    sys.exit(3)
say({{"kind": "hello", "vllm": "0.0-fake", "torch": "fake", "python": "3"}})
if mode == "error":
    say({{"kind": "error", "message": "ValueError: no such model"}})
    sys.exit(1)
for cell in job["cells"]:
    say({{"kind": "cell", "name": cell["name"], "seconds": [0.5, 0.25, 1.0][:job["repeats"]],
         "tokens": [[-1] * cell["max_tokens"] for _ in cell["rows"]]}})
say({{"kind": "done"}})
"""
JOB = {"cells": [{"name": "B2K0", "max_tokens": 3, "rows": [{"prompt": [5], "adapter": None}] * 2},
                 {"name": "B1K1", "max_tokens": 3, "rows": [{"prompt": [5], "adapter": 0}]}],
       "repeats": 3}


@pytest.fixture
def fake_python(tmp_path) -> pathlib.Path:
    """An executable that plays vLLM's interpreter."""
    path = tmp_path / "fake-python"
    path.write_text(FAKE.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def small_tiny(monkeypatch):
    """The 'tiny' model shrunk so a whole run takes seconds (issue 11's cells and recorded
    numbers stay those of tiny)."""
    monkeypatch.setitem(vllm_compare.MODELS, "tiny", SHAPE)


def _run(tmp_path, *options: str) -> list[dict]:
    argv = ["--models", "tiny", "--cells", "32x0,8x8,1x0", "--num-adapters", "8",
            "--tokens", "4", "--repeats", "1", "--warmups", "0",
            "--results-dir", str(tmp_path / "results"), *options]
    assert vllm_compare.main(argv) == 0
    lines = (tmp_path / "results" / "vllm_compare.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _assert_lorafleet_filled(row: dict) -> None:
    assert row["engine_tok_s"] > 0 and row["server_tok_s"] > 0
    assert row["server_engine_ratio"] == pytest.approx(row["server_tok_s"] / row["engine_tok_s"])
    assert row["server_client_cpu_s"] >= 0
    assert row["server_options"] in ("--cpu-thread-wait spin", "--cpu-thread-wait sleep")
    assert row["num_tokens"] == row["batch"] * 4
    assert row["machine_info"]["commit"] and row["machine_info"]["num_cores"] >= 1
    assert row["load_avg_1m"] >= 0 and row["lorafleet"]
    assert {"engine", "server"} <= set(row["load_1m"])  # the load while each was measured


@pytest.mark.slow
def test_without_vllm_the_recorded_numbers_are_shown_and_labelled(tmp_path, small_tiny, capsys):
    rows = _run(tmp_path, "--no-vllm", "--server-cpu-thread-wait", "sleep")
    out = capsys.readouterr().out
    assert {r["server_options"] for r in rows} == {"--cpu-thread-wait sleep"}
    assert [(r["batch"], r["num_adapters"]) for r in rows] == [(32, 0), (8, 8), (1, 0)]
    base, mixed, single = rows
    for row in rows:
        _assert_lorafleet_filled(row)
        assert row["peft_tok_s"] > 0
        assert row["tokens_matched"] is None and row["vllm_versions"] is None
        assert "NOT measured" in row["vllm_note"]
    # Issue 11's numbers for tiny, marked recorded; tiny at B = 1 was never recorded.
    assert (base["vllm_source"], base["vllm_tok_s"], base["vllm_off_tok_s"]) == (
        "recorded", 2332, 4496)
    assert (mixed["vllm_source"], mixed["vllm_tok_s"]) == ("recorded", 797)
    assert mixed["server_vllm_ratio"] == pytest.approx(mixed["server_tok_s"] / 797)
    assert single["vllm_source"] == "none" and single["server_vllm_ratio"] is None
    assert "2332 (4496 LoRA off) [recorded]" in out and "797 [recorded]" in out
    assert "recorded in issue 11 or 26 on the dev machine, NOT measured in this run" in out
    assert "tiny B=1 K=0: server >= 1x vLLM: no vLLM number" in out
    [verdict] = rows[0]["targets"]
    assert verdict["vllm_source"] == "none" and verdict["is_met"] is False


@pytest.mark.slow
def test_with_a_side_interpreter_its_times_and_tokens_are_used(tmp_path, small_tiny,
                                                                fake_python, capsys):
    rows = _run(tmp_path, "--vllm-python", str(fake_python), "--no-peft")
    out = capsys.readouterr().out
    # By default the worker waits as on a machine to itself, as vLLM's settings do.
    assert {r["server_options"] for r in rows} == {"--cpu-thread-wait spin"}
    for row in rows:
        _assert_lorafleet_filled(row)
        assert row["vllm_source"] == "measured" and row["peft_tok_s"] is None
        assert row["vllm_tok_s"] == pytest.approx(row["batch"] * 4 / 0.5)  # 4 tokens in 0.5 s
        assert row["server_vllm_ratio"] == pytest.approx(row["server_tok_s"] / row["vllm_tok_s"])
        # The stand-in answers token -1 everywhere: nothing of lorafleet's matches.
        assert (row["tokens_matched"], row["tokens_total"]) == (0, row["batch"] * 4)
        assert row["vllm_versions"]["vllm"] == "0.0-fake"
        assert "vllm" in row["load_1m"]
        assert "LD_PRELOAD" in row["vllm_env"] or not os.path.exists(protocol.TCMALLOC_PATHS[0])
    assert rows[0]["vllm_off_tok_s"] == pytest.approx(256.0) and rows[1]["vllm_off_tok_s"] is None
    assert "greedy tokens, vLLM vs lorafleet: 0/164 match" in out
    assert "load average (1 min) as each system finished its cells: vllm " in out
    assert "[recorded]" not in out
    [verdict] = rows[0]["targets"]
    assert verdict["ratio"] == pytest.approx(rows[2]["server_tok_s"] / 8.0)


def test_rounds_take_turns_and_each_figure_is_their_median(tmp_path, small_tiny, monkeypatch):
    # The systems are stood in for (the one-round tests above run the real ones): what is
    # checked is the turns and the medians.
    turns, vllm_rates = [], iter([100.0, 300.0, 200.0])  # one per round

    def vllm(python, model_dir, adapters, workloads, rows, args):
        turns.append("vllm")
        for row in rows:
            row.update(vllm_tok_s=next(vllm_rates), vllm_tokens=[[1]])
        return {"vllm": "fake"}

    def lorafleet(model_dir, adapters, workloads, rows, args):
        turns.append("lorafleet")
        for row in rows:
            rate = 50.0 + len(turns)
            row.update(engine_tok_s=rate, server_tok_s=rate / 2, server_client_cpu_s=0.1,
                       lorafleet_tokens=[[1]], load_1m={"engine": len(turns)})

    monkeypatch.setattr(vllm_compare, "_measure_vllm", vllm)
    monkeypatch.setattr(vllm_compare, "_run_lorafleet", lorafleet)
    args = vllm_compare.parse_args(["--models", "tiny", "--cells", "8x8", "--num-adapters", "8",
                                    "--tokens", "4", "--rounds", "3"])
    [row], versions = vllm_compare.compare_model("tiny", args, tmp_path, python=None)
    assert turns == ["vllm", "lorafleet"] * 3 and versions == {"vllm": "fake"}
    assert row["rounds"]["vllm_tok_s"] == [100, 300, 200] and row["vllm_tok_s"] == 200
    assert row["rounds"]["engine_tok_s"] == [52, 54, 56] and row["engine_tok_s"] == 54
    assert row["server_vllm_ratio"] == pytest.approx(27 / 200)
    assert row["server_engine_ratio"] == pytest.approx(0.5)
    assert row["load_1m"] == {"engine": 6}  # each system's highest
    assert (row["tokens_matched"], row["tokens_total"]) == (1, 1)


@pytest.mark.slow
def test_a_failing_side_falls_back_to_recorded_numbers_and_says_why(tmp_path, small_tiny,
                                                                    capsys):
    # lorafleet's own interpreter has no vllm: the real run_vllm.py reports the import error.
    rows = _run(tmp_path, "--vllm-python", sys.executable, "--cells", "8x8", "--no-peft")
    [row] = rows
    assert row["vllm_source"] == "recorded" and row["vllm_tok_s"] == 797
    assert "No module named 'vllm'" in row["vllm_note"] and "NOT measured" in row["vllm_note"]
    assert "vLLM failed: ModuleNotFoundError" in capsys.readouterr().out


def test_run_job_reads_cells_and_versions(fake_python):
    run = protocol.run_job(fake_python, JOB, env={}, timeout=60)
    assert run.versions == {"vllm": "0.0-fake", "torch": "fake", "python": "3"}
    assert set(run.cells) == {"B2K0", "B1K1"}
    cell = run.cells["B2K0"]
    assert cell.seconds == [0.5, 0.25, 1.0] and cell.tokens == [[-1, -1, -1]] * 2
    assert cell.tok_s(6) == pytest.approx(12.0)  # median 0.5 s


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "timeout", "expected"), [
    ("error", 60, "ValueError: no such model"),
    ("crash", 60, "exited with status 3"),
    ("hang", 1, "killed after 1 s"),
])
def test_run_job_failures_say_why(fake_python, monkeypatch, mode, timeout, expected):
    monkeypatch.setenv("FAKE_MODE", mode)
    with pytest.raises(protocol.SideError) as caught:
        protocol.run_job(fake_python, JOB, env={}, timeout=timeout)
    assert expected in str(caught.value)
    assert "INFO some vLLM log line" in str(caught.value)  # the output's tail comes along


def test_run_job_with_a_missing_interpreter(tmp_path):
    with pytest.raises(protocol.SideError, match="cannot run"):
        protocol.run_job(tmp_path / "nope" / "python", JOB, env={}, timeout=5)


def test_side_env_follows_vllm_cpu_recommendations(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").write_bytes(b"")
    env = protocol.side_env(tmp_path / "bin" / "python", kvcache_gib=3)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == f"0-{os.cpu_count() - 1}"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["LD_PRELOAD"].split(":")[-1] == str(tmp_path / "lib" / "libiomp5.so")


def test_find_python_order(monkeypatch, tmp_path):
    monkeypatch.setenv(protocol.PYTHON_ENV, str(tmp_path / "from-env"))
    assert protocol.find_python(None) == tmp_path / "from-env"
    assert protocol.find_python("/x/python") == pathlib.Path("/x/python")
    assert protocol.find_python("") is None
    monkeypatch.delenv(protocol.PYTHON_ENV)
    monkeypatch.setattr(protocol, "DEFAULT_PYTHON", tmp_path / "absent")
    assert protocol.find_python(None) is None


def test_count_matches_stops_at_each_rows_first_difference():
    assert table.count_matches([[1, 2, 3], [4, 5, 6]], [[1, 9, 3], [4, 5, 6]]) == (4, 6)
    assert table.count_matches([[1, 2]], [[1]]) == (1, 2)


def test_bad_options_are_refused(capsys):
    with pytest.raises(SystemExit):
        vllm_compare.main(["--cells", "32x64", "--num-adapters", "8"])
    assert "below the largest K (64)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vllm_compare.main(["--cells", "32by8"])
    assert "expected BxK" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vllm_compare.main(["--rounds", "0"])
    assert "--rounds must be >= 1" in capsys.readouterr().err


def test_side_script_imports_nothing_of_lorafleet():
    source = (pathlib.Path(protocol.__file__).parent / "run_vllm.py").read_text()
    imports = [line.split()[1] for line in source.splitlines()
               if line.strip().startswith(("import ", "from "))]
    assert set(imports) <= {"json", "platform", "sys", "time", "torch", "vllm",
                            "vllm.inputs", "vllm.lora.request"}, imports
    assert protocol.RESULT_PREFIX in source


def test_every_torch_op_of_the_run_is_on_one_thread_that_is_not_the_main_one(monkeypatch,
                                                                             tmp_path):
    """Checkpoints, the in-process engine and its runs share one thread, not the main one:
    a second thread running torch ops holds a second OpenMP team, and libgomp then cuts
    every thread's spin, which read the engine column at one row 21 tokens/s against the
    server's 29 (30 and 30 after)."""
    seen = []

    def compare_model(name, args, scratch, python):
        seen.append(threading.current_thread())
        on_thread(lambda: seen.append(threading.current_thread()))
        return [], {}

    monkeypatch.setattr(vllm_compare, "compare_model", compare_model)
    monkeypatch.setattr(vllm_compare, "report", lambda *args: None)
    vllm_compare.main(["--models", "tiny", "--no-vllm", "--no-peft",
                       "--results-dir", str(tmp_path)])
    assert len(seen) == 2
    assert seen[0] is not threading.main_thread() and seen[1] is seen[0]
