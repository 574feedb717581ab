"""Generates the Python stubs next to the .proto files, or checks they are current.

    python protos/generate.py          # regenerate protos/lorafleet/**/*_pb2*.py
    python protos/generate.py --check  # exit 1 if the committed stubs are stale

The stubs are committed so that `pip install lorafleet` needs no protoc; the check
(run by the test suite) keeps them from drifting from the .proto files.
"""

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _proto_files() -> list[pathlib.Path]:
    return sorted(PROTO_ROOT.glob("lorafleet/**/*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    """Runs protoc over every lorafleet .proto file, writing stubs under out_dir."""
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in _proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _stubs(root: pathlib.Path) -> set[pathlib.Path]:
    return {p.relative_to(root) for p in root.glob("lorafleet/**/*") if p.name.endswith(SUFFIXES)}


def check() -> list[str]:
    """Returns the stub files that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        generate(fresh)
        expected, actual = _stubs(fresh), _stubs(PROTO_ROOT)
        stale = sorted(str(p) for p in expected ^ actual)
        stale += sorted(
            str(p) for p in expected & actual
            if not filecmp.cmp(fresh / p, PROTO_ROOT / p, shallow=False)
        )
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if stubs are stale")
    if parser.parse_args().check:
        stale = check()
        if stale:
            sys.exit("stale stubs (run `make proto`): " + ", ".join(stale))
        return
    for old in _stubs(PROTO_ROOT):
        (PROTO_ROOT / old).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        for rel in _stubs(pathlib.Path(tmp)):
            shutil.copyfile(pathlib.Path(tmp) / rel, PROTO_ROOT / rel)


if __name__ == "__main__":
    main()
