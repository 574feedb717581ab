"""The v1 contracts: stubs are current, and every proto element is documented."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def test_committed_stubs_match_the_protos():
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--check"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr


def _descriptor_set(tmp_path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "set.pb"
    files = [str(p.relative_to(PROTOS)) for p in sorted(PROTOS.glob("lorafleet/**/*.proto"))]
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "protoc", f"-I{PROTOS}", f"-I{include}", "--include_source_info",
        f"--descriptor_set_out={out}", *files,
    ])
    assert code == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


# Paths in SourceCodeInfo: (field number in the parent, index). 4 message_type,
# 5 enum_type, 6 service; in a message 2 field, 3 nested_type, 4 enum_type, 8 oneof;
# in an enum 2 value; in a service 2 method.
_CHILDREN = {
    "file": {4: "message", 5: "enum", 6: "service"},
    "message": {2: "field", 3: "message", 4: "enum", 8: "oneof"},
    "enum": {2: "value"},
    "service": {2: "method"},
}


def _elements(file: descriptor_pb2.FileDescriptorProto):
    """Yields (kind, path) for every message, field, enum, value, service and method."""
    def walk(kind, proto, path):
        for number, child_kind in _CHILDREN.get(kind, {}).items():
            field = proto.DESCRIPTOR.fields_by_number[number].name
            for index, child in enumerate(getattr(proto, field)):
                if child_kind == "message" and child.options.map_entry:
                    continue  # synthesized by protoc for map<> fields
                if child_kind == "oneof" and child.name.startswith("_"):
                    continue  # synthesized for proto3 `optional` fields
                child_path = (*path, number, index)
                yield child_kind, child.name, child_path
                yield from walk(child_kind, child, child_path)
    yield from walk("file", file, ())


def test_every_rpc_message_field_and_enum_has_a_comment(tmp_path):
    missing = []
    for file in _descriptor_set(tmp_path).file:
        if not file.name.startswith("lorafleet/"):
            continue
        comments = {
            tuple(loc.path): loc.leading_comments.strip() or loc.trailing_comments.strip()
            for loc in file.source_code_info.location
        }
        for kind, name, path in _elements(file):
            if not comments.get(path):
                missing.append(f"{file.name}: {kind} {name}")
    assert missing == []


def test_enums_start_with_unspecified_and_rpcs_have_own_messages(tmp_path):
    for file in _descriptor_set(tmp_path).file:
        if not file.name.startswith("lorafleet/"):
            continue
        assert file.package.endswith(".v1")
        for enum in file.enum_type:
            assert enum.value[0].number == 0
            assert enum.value[0].name.endswith("_UNSPECIFIED")
        for service in file.service:
            for method in service.method:
                assert method.input_type.endswith(f".{method.name}Request")
                assert method.output_type.endswith(f".{method.name}Response")
