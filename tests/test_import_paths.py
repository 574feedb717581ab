"""No command depends on the order of sys.path.

Python puts the current folder first on sys.path (`python -c`, `python -m`, pytest), so a
top-level folder of this checkout that is a regular package (has an __init__.py) is what
`import <folder>` finds, for every library in that process too: with kernels/__init__.py,
transformers' `import kernels` got our folder instead of Hugging Face's package. The
component folders are therefore namespace portions of `lorafleet` (setup.py), and these
tests install look-alike packages to prove that each bare name still means the installed
package, on every Python the project supports.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Folders whose bare names PyPI packages may carry; each must stay importable as the
# installed package from the repository root.
COMPONENT_FOLDERS = ("clients", "controlplane", "dataplane", "deploy", "kernels", "protos",
                     "runtime")
# The two folders that are run from the checkout by their bare names (`python -m
# benchmarks`, pytest's `tests.*`); they are tooling, never installed.
TOOLING_PACKAGES = {"benchmarks", "tests"}
CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    assert getattr(module, "FAKE", None) == name, f"import {name} gave {module}"
print("ok")
"""


def _fake_site(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder of regular packages named like the component folders, as PyPI would install."""
    site = tmp_path / "site"
    for name in COMPONENT_FOLDERS:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"FAKE = {name!r}\n")
    return site


def _run(python: str, *args: str, pythonpath: pathlib.Path | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([python, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_only_the_tooling_folders_are_regular_packages():
    regular = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert regular == TOOLING_PACKAGES
    assert not (ROOT / "protos" / "lorafleet" / "__init__.py").exists()


def test_bare_names_in_the_checkout_are_the_installed_packages(tmp_path):
    done = _run(sys.executable, "-c", CHECK, *COMPONENT_FOLDERS, pythonpath=_fake_site(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.slow
def test_transformers_imports_in_the_checkout():
    """transformers imports Hugging Face's `kernels`; from the root it must get that one."""
    done = _run(sys.executable, "-c",
                "import transformers.modeling_utils, kernels; print(kernels.__file__)")
    assert done.returncode == 0, done.stderr
    assert not done.stdout.strip().startswith(str(ROOT / "kernels"))


def test_benchmarks_run_beside_look_alike_packages(tmp_path):
    done = _run(sys.executable, "-m", "benchmarks", "--help", pythonpath=_fake_site(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout


def _interpreter(version: str) -> str | None:
    """python<version> from PATH or pyenv, if it runs."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = pathlib.Path.home() / ".pyenv" / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.10", "3.12"])
def test_other_pythons_install_and_resolve_the_same_way(version, tmp_path):
    """The editable install's finder and the namespace folders, on the other supported Pythons."""
    python = _interpreter(version)
    assert python, f"python{version} not found: the project supports 3.10-3.12 (pyenv install)"
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    venv_python = str(venv / "bin" / "python")
    done = _run(venv_python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT))
    assert done.returncode == 0, done.stderr
    find = ("import importlib.util as u; "
            "print(u.find_spec('lorafleet.kernels.dispatch').origin, "
            "u.find_spec('lorafleet.clients.client').origin, u.find_spec('lorafleet.runtime.names').origin)")
    done = _run(venv_python, "-c", find)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / "kernels" / "dispatch.py"),
                                   str(ROOT / "clients" / "client.py"),
                                   str(ROOT / "runtime" / "names.py")]
    done = _run(venv_python, "-c", CHECK, *COMPONENT_FOLDERS, pythonpath=_fake_site(tmp_path))
    assert done.returncode == 0, done.stderr
