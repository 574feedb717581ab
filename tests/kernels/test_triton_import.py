"""Triton stays out of a CPU-only worker's process (issue 22 #5): importing it there did
nothing useful and ended every worker's log with ~30 lines of "nanobind: leaked ..."."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROBE = ("import sys, lorafleet.kernels.dispatch as d; "
         "print('triton' in sys.modules, d.is_triton_available())")


def _probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("TRITON_INTERPRET", "LORAFLEET_TRITON")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nanobind" not in done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_triton_is_imported_only_where_its_kernels_can_run():
    import torch

    on_cuda = torch.cuda.is_available()
    assert _probe() == ("True True" if on_cuda else "False False")
    assert _probe(TRITON_INTERPRET="1") == "True True"
    assert _probe(LORAFLEET_TRITON="1") == "True True"
