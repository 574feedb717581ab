"""Finding the tool binaries that `make setup` installs into the virtualenv."""

from __future__ import annotations

import pathlib
import shutil
import sys


def installed_binary(name: str, package: str) -> str:
    """Path of `name`: next to this interpreter first, then on PATH."""
    beside = pathlib.Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run `make setup` (installs {package})")
    return found
