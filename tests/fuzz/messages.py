"""Hypothesis strategies that fill any protobuf message from its DESCRIPTOR.

Every field is left out or set; scalars mix small values, the type's extremes and
plausible values (adapter names and references, worker addresses, source URIs) so the
servers' deeper paths are reached, not only their first check; nested messages and lists
are bounded. `raw_bodies()` is garbage bytes for the wire, which no stub would send.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

Hints = Mapping[str, Sequence[str]] | None
MAX_DEPTH = 3
MAX_LIST = 3

# Strings a caller might plausibly send, for any string field.
PLAUSIBLE_TEXT = (  # `hints` (see messages) add values per field name

    "", "acme/qv8", "acme/qv8@1", "acme/qv8@999999999", "acme/qv8@0", "beta/ko16", "acme",
    "acme/", "/qv8", "ACME/QV8", "acme/qv8/extra", "tenant/name@-1", "a" * 300, "127.0.0.1:1",
    "worker-1", "localhost:0", "../../etc/passwd", "/", ".", "file:///nonexistent/adapter",
    "file://", "sha256:" + "0" * 64, "0" * 64, "\x00", "é/ü", "%s%n", "{{template}}",
)

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    small = st.integers(max(low, -3), min(high, 64))
    return st.one_of(small, st.sampled_from([low, high, max(low, -1), min(high, 2**31)]),
                     st.integers(low, high))


def _texts(field: FieldDescriptor, hints: Hints) -> st.SearchStrategy[str]:
    hinted = tuple((hints or {}).get(field.name, ()))
    plausible = [st.sampled_from(hinted)] * 2 if hinted else []
    return st.one_of(*plausible, st.sampled_from(PLAUSIBLE_TEXT), st.text(max_size=40),
                     st.text(string.printable, min_size=200, max_size=5000))


def _scalar(field: FieldDescriptor, hints: Hints) -> st.SearchStrategy:
    kind = field.type
    if kind in _INT_RANGES:
        return _integers(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, -0.0, 1.0, 2.5, -1.0]), st.floats(width=width))
    if kind == FieldDescriptor.TYPE_STRING:
        return _texts(field, hints)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    raise TypeError(f"unsupported field type {kind} of {field.full_name}")


def _value(field: FieldDescriptor, depth: int, hints: Hints) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1, hints)
    return _scalar(field, hints)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _field(field: FieldDescriptor, depth: int, hints: Hints) -> st.SearchStrategy:
    if _is_map(field):
        entry = field.message_type
        return st.dictionaries(_value(entry.fields_by_name["key"], depth, hints),
                               _value(entry.fields_by_name["value"], depth, hints),
                               max_size=MAX_LIST)
    if field.is_repeated:
        return st.lists(_value(field, depth, hints), max_size=MAX_LIST)
    return _value(field, depth, hints)


def _assign(message, field: FieldDescriptor, value) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        is_message = field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE
        for key, item in value.items():
            if is_message:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        for item in value:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target.add().CopyFrom(item)
            else:
                target.append(item)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def messages(descriptor: Descriptor, depth: int = 0,
             hints: Hints = None) -> st.SearchStrategy:
    """Instances of the message `descriptor` describes, any subset of fields set;
    `hints` maps a string field's name to values worth trying often (real paths)."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    optional = {f.name: _field(f, depth, hints) for f in descriptor.fields}

    def build(values: dict):
        message = cls()
        for name, value in values.items():
            _assign(message, descriptor.fields_by_name[name], value)
        return message

    return st.builds(build, st.fixed_dictionaries({}, optional=optional))


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bytes that are mostly not a valid encoding of anything (and sometimes are)."""
    return st.one_of(st.binary(max_size=256), st.sampled_from([
        b"\xff" * 16, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 10, b"\x12\x05abc", b"\x80"]))


def authorization(*keys: str) -> st.SearchStrategy[tuple]:
    """No metadata, an `authorization` header holding junk (the ASCII gRPC allows), or
    one of `keys` as a bearer key (the key's prefix with junk after it, too)."""
    junk = st.text(string.ascii_letters + string.digits + "-._~+/= ", max_size=80)
    header = st.one_of(junk.map(lambda t: t.strip() or "x"),
                       junk.map(lambda t: f"Bearer {t}".strip()))
    if keys:
        valid = st.sampled_from([f"Bearer {k}" for k in keys])
        forged = st.tuples(st.sampled_from(keys), junk).map(lambda kj: f"Bearer {kj[0][:16]}{kj[1]}".strip())
        header = st.one_of(header, valid, valid, forged)
    return st.one_of(st.just(()), header.map(lambda h: (("authorization", h),)))
