"""Before any part runs: make `lorafleet` importable and name every missing package.

The GPU machine runs its own python3 (CUDA torch, Triton, transformers) with no network
and without this project installed, so nothing may be pip-installed there: `lorafleet` is
imported straight from the checkout, and each package the parts need but the machine
lacks is named with the way to bring it (docs/gpu.md, "Missing packages").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
# A folder whose sitecustomize.py makes a child python import `lorafleet` from here too.
CHECKOUT_SITE = pathlib.Path(__file__).resolve().parent / "checkout_site"
# Top-level module -> the distribution that provides it. The engine's imports reach the
# adapter, server and auth modules, hence gRPC, OpenTelemetry, argon2 and re2.
NEEDED = {"torch": "torch", "triton": "triton", "transformers": "transformers",
          "safetensors": "safetensors", "tokenizers": "tokenizers", "pytest": "pytest",
          "jinja2": "jinja2", "psutil": "psutil", "prometheus_client": "prometheus-client",
          "google.protobuf": "protobuf", "google.rpc": "googleapis-common-protos",
          "grpc": "grpcio", "grpc_health": "grpcio-health-checking",
          "grpc_reflection": "grpcio-reflection", "opentelemetry": "opentelemetry-api",
          "opentelemetry.sdk": "opentelemetry-sdk",
          "opentelemetry.semconv": "opentelemetry-semantic-conventions",
          "argon2": "argon2-cffi", "_argon2_cffi_bindings": "argon2-cffi-bindings",
          "_cffi_backend": "cffi", "re2": "google-re2",
          "aiohttp": "aiohttp"}  # `lorafleet serve` (the serving part) imports it
CARRY_HINT = ("bring them as wheels: docs/gpu.md, 'Missing packages' (pip download on a "
              "machine with network into .whl/, carry .whl, pip install --target there)")


# The component folders and where setup.py maps them: lorafleet.<folder>.
COMPONENTS = ("clients", "controlplane", "dataplane", "kernels", "runtime")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds `lorafleet` (protos/lorafleet) and its component folders in this checkout, as
    namespace packages the way setup.py maps them; deeper modules follow their __path__."""

    def find_spec(self, name, path, target=None):
        folders = {"lorafleet": ROOT / "protos" / "lorafleet"}
        folders.update({f"lorafleet.{c}": ROOT / c for c in COMPONENTS})
        if name not in folders:
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [str(folders[name])]
        return spec


def ensure_lorafleet_importable() -> str:
    """Imports `lorafleet` from the install, or else straight from this checkout.
    Returns where it came from."""
    try:
        if importlib.util.find_spec("lorafleet.kernels.dispatch") is not None:
            return "installed"
    except ModuleNotFoundError:  # no `lorafleet` at all
        pass
    sys.modules.pop("lorafleet", None)
    sys.meta_path.insert(0, _CheckoutFinder())
    return "checkout"


def child_env() -> dict[str, str]:
    """What a child python (the `lorafleet serve` a part starts, and the engine process it
    spawns) needs in its environment to import `lorafleet` as this process does: nothing
    where it is installed; else `checkout_env()`."""
    if any(isinstance(finder, _CheckoutFinder) for finder in sys.meta_path):
        return checkout_env()
    return {}


def checkout_env() -> dict[str, str]:
    """PYTHONPATH leading with CHECKOUT_SITE (its sitecustomize runs
    `ensure_lorafleet_importable` at start-up) and the checkout, before what PYTHONPATH
    holds already (carried wheels, docs/gpu.md)."""
    paths = [str(CHECKOUT_SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def missing_packages() -> list[str]:
    """Distributions in NEEDED whose module cannot be found, in NEEDED's order."""
    missing = []
    for module, distribution in NEEDED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found and distribution not in missing:
            missing.append(distribution)
    return missing


def cuda_problem() -> str | None:
    """Why this python cannot use the machine's GPU, when the machine has one; else None."""
    import torch

    if torch.cuda.is_available() or not has_nvidia_gpu():
        return None
    if torch.version.cuda is None:
        return (f"this python ({sys.executable}) has a CPU-only torch {torch.__version__} but "
                "the machine has an NVIDIA GPU: run it with the machine's own python, "
                "e.g. make gpu-check GPU_PYTHON=python3")
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU although the machine has one"


def has_nvidia_gpu() -> bool:
    """Whether the machine shows an NVIDIA GPU (a device node or nvidia-smi)."""
    return os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
