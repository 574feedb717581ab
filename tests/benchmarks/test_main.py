"""`python -m benchmarks`: names, option pass-through and --quick."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.__main__ import BENCHMARKS, QUICK, plan


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True,
                          text=True, timeout=120)


def test_serving_help_is_the_benchmarks_own():
    done = _run("serving", "--help")
    assert done.returncode == 0, done.stderr
    assert "--preset" in done.stdout and "thrash" in done.stdout and "--rate" in done.stdout


def test_options_reach_the_named_benchmark():
    # serving's own parser answers: a preset cannot drive an existing address.
    done = _run("serving", "--preset", "thrash", "--addr", "127.0.0.1:1")
    assert done.returncode == 2
    assert "presets start their own worker" in done.stderr
    done = _run("serving", "--preset", "nosuch")
    assert done.returncode == 2 and "invalid choice: 'nosuch'" in done.stderr


def test_unknown_benchmark_and_misplaced_options_are_refused():
    done = _run("nosuch")
    assert done.returncode == 2 and "unknown benchmark(s): nosuch" in done.stderr
    done = _run("placement", "lora_decode", "--versions", "10")
    assert done.returncode == 2 and "exactly one named benchmark" in done.stderr


def test_plan():
    assert plan([]) == [(name, []) for name in BENCHMARKS]
    assert plan(["--quick"]) == [(name, QUICK[name]) for name in BENCHMARKS]
    assert plan(["serving", "--preset", "thrash"]) == [("serving", ["--preset", "thrash"])]
    assert plan(["--quick", "serving", "--preset", "cold"]) == [
        ("serving", ["--quick", "--preset", "cold"])]
    assert plan(["placement", "lora_decode", "--quick"]) == [
        ("placement", QUICK["placement"]), ("lora_decode", QUICK["lora_decode"])]
    assert set(QUICK) == set(BENCHMARKS)
