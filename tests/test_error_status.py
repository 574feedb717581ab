"""The one rule from an exception to a gRPC status (lorafleet/error_status.py)."""

from __future__ import annotations

import ast
import pathlib

import grpc

from lorafleet.runtime.error_status import MAX_MESSAGE_CHARS, UNDECLARED_MESSAGE, status_of

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("clients", "controlplane", "dataplane", "kernels", "protos/lorafleet", "runtime")


class Refused(LookupError):
    """A domain error."""

    status_code_name = "NOT_FOUND"


class RefusedMore(Refused):
    """Inherits its base's code."""


class Busy(Refused):
    """Declares its own."""

    status_code_name = "UNAVAILABLE"


def test_an_error_gets_the_code_it_or_its_nearest_base_declares():
    assert status_of(Refused("no such adapter")) == (grpc.StatusCode.NOT_FOUND, "no such adapter")
    assert status_of(RefusedMore("gone"))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(Busy("later"))[0] == grpc.StatusCode.UNAVAILABLE


def test_an_undeclared_error_is_internal_and_says_nothing():
    assert status_of(KeyError("/secret/path")) == (grpc.StatusCode.INTERNAL, UNDECLARED_MESSAGE)


def test_a_message_is_bounded():
    code, message = status_of(Refused("x" * 10_000))
    assert code == grpc.StatusCode.NOT_FOUND and len(message) < MAX_MESSAGE_CHARS + 20


def test_every_declared_code_names_a_status_code():
    names = {code.name for code in grpc.StatusCode} - {"OK"}
    declared = {}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if _declares(node):
                    declared[f"{path.relative_to(ROOT)}:{node.lineno}"] = node.value.value
    assert len(declared) > 20  # the walk finds the declarations
    assert {where: name for where, name in declared.items() if name not in names} == {}


def _declares(node: ast.AST) -> bool:
    return (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and any(getattr(t, "id", None) == "status_code_name" for t in node.targets))
