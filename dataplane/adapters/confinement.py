"""Which adapter sources a worker may read: local directories under configured roots,
S3 buckets and prefixes on an allow-list, and a size limit per adapter.

A worker started from the command line is confined (`--adapter-root`, `--s3-allow`,
`--max-adapter-bytes`, docs/security.md); a programmatic SourcePolicy() reads any path
or bucket, still within the size limit. Refusals name no server path: the caller learns
that its source is outside what this worker may read, the log says which path and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping

from lorafleet.dataplane.adapters.errors import AdapterInvalid

DEFAULT_MAX_ADAPTER_BYTES = 2 << 30  # 2 GiB: a rank-64 adapter of a 70B model is ~1.7 GB
OUTSIDE_ROOTS = "adapter source is outside the directories this worker may read adapters from"
S3_NOT_ALLOWED = "adapter source is in an S3 bucket or prefix this worker may not read"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourcePolicy:
    """Where adapters may come from. `local_roots` None: any local directory; () none at
    all. `s3_allowed` None: any bucket; else "bucket" or "bucket/prefix" entries.
    `max_adapter_bytes`: the most an adapter's files may total."""

    local_roots: tuple[pathlib.Path, ...] | None = None
    s3_allowed: tuple[str, ...] | None = None
    max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES

    @classmethod
    def confined(cls, roots: Iterable[str | pathlib.Path], s3_allowed: Iterable[str] = (),
                 max_adapter_bytes: int = DEFAULT_MAX_ADAPTER_BYTES) -> SourcePolicy:
        """A policy reading only under `roots` (each must be an existing directory) and
        the `s3_allowed` buckets/prefixes; ValueError names a bad entry."""
        resolved = []
        for root in roots:
            path = pathlib.Path(os.path.realpath(root))
            if not path.is_dir():
                raise ValueError(f"--adapter-root {root}: not a directory")
            resolved.append(path)
        allowed = tuple(_s3_entry(entry) for entry in s3_allowed)
        if max_adapter_bytes <= 0:
            raise ValueError(f"--max-adapter-bytes {max_adapter_bytes}: must be positive")
        return cls(tuple(resolved), allowed, max_adapter_bytes)

    def local_dir(self, path: pathlib.Path, uri: str) -> pathlib.Path:
        """The real directory `path` names, refused (AdapterInvalid) when it, or a symlink
        on the way, lies outside every root, or when the path climbs with '..'."""
        try:
            real = pathlib.Path(os.path.realpath(path))
        except (OSError, ValueError):  # a NUL byte, a loop: not readable, nor under a root
            real = None
        if self.local_roots is None:
            return real or path
        if real is None:
            _refuse(uri, "the path cannot be resolved", OUTSIDE_ROOTS)
        if ".." in path.parts:
            _refuse(uri, "the path contains '..'", OUTSIDE_ROOTS)
        if not self._is_under_root(real):
            _refuse(uri, f"resolves to {real}, outside every --adapter-root", OUTSIDE_ROOTS)
        return real

    def check_files(self, directory: pathlib.Path, names: Iterable[str], uri: str) -> None:
        """Refuses adapter files that are symlinks out of the roots, or that together are
        larger than the limit; checked from file sizes, before anything is read."""
        sizes = {}
        for name in names:
            real = pathlib.Path(os.path.realpath(directory / name))
            if not real.exists():
                continue
            if self.local_roots is not None and not self._is_under_root(real):
                _refuse(uri, f"{name} resolves to {real}, outside every --adapter-root",
                        OUTSIDE_ROOTS)
            sizes[name] = real.stat().st_size
        self.check_size(sizes, uri)

    def check_size(self, sizes: Mapping[str, int], uri: str) -> None:
        """Refuses an adapter whose files (name -> bytes) total more than the limit."""
        total = sum(sizes.values())
        if total > self.max_adapter_bytes:
            message = (f"adapter files total {total} bytes, over this worker's limit of "
                       f"{self.max_adapter_bytes} bytes per adapter")
            _refuse(uri, message, message)

    def check_s3(self, bucket: str, prefix: str, uri: str) -> None:
        """Refuses a bucket/prefix no `s3_allowed` entry covers."""
        if self.s3_allowed is None:
            return
        for entry in self.s3_allowed:
            allowed_bucket, _, allowed_prefix = entry.partition("/")
            if bucket == allowed_bucket and (
                    not allowed_prefix or prefix == allowed_prefix
                    or prefix.startswith(allowed_prefix + "/")):
                return
        _refuse(uri, "no --s3-allow entry covers it", S3_NOT_ALLOWED)

    def _is_under_root(self, real: pathlib.Path) -> bool:
        return any(real == root or real.is_relative_to(root) for root in self.local_roots or ())


UNCONFINED = SourcePolicy()


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--adapter-root, --s3-allow and --max-adapter-bytes (serve and worker)."""
    group = parser.add_argument_group(
        "adapter sources", "where LoadAdapter and ValidateAdapter may read adapters from "
                           "(docs/security.md, \"Adapter sources\")")
    group.add_argument("--adapter-root", action="append", default=[], metavar="DIR",
                       help="read local adapters only under DIR (repeatable; symlinks "
                            "resolved, '..' refused); default: only the directories of the "
                            "--adapter arguments, and no local path at all without them")
    group.add_argument("--s3-allow", action="append", default=[], metavar="BUCKET[/PREFIX]",
                       help="read s3:// adapters only from this bucket, or prefix within it "
                            "(repeatable; default: no s3:// source)")
    group.add_argument("--max-adapter-bytes", type=int, default=DEFAULT_MAX_ADAPTER_BYTES,
                       metavar="N", help="refuse adapters whose files total more than N "
                                         "bytes, before reading them (default %(default)s)")


def policy_from_args(args: argparse.Namespace) -> SourcePolicy:
    """The policy the options describe; ValueError names a bad option."""
    # Without --adapter-root, each --adapter directory is a root of its own (one that does
    # not exist fails its load with the usual message, not here).
    roots = args.adapter_root or [p for _, p in args.adapter if os.path.isdir(p)]
    return SourcePolicy.confined(roots, args.s3_allow, args.max_adapter_bytes)


def _s3_entry(entry: str) -> str:
    """"bucket" or "bucket/prefix" without a scheme or slashes at either end."""
    text = entry.removeprefix("s3://").strip("/")
    bucket, _, prefix = text.partition("/")
    if not bucket or any(part in ("", ".", "..") for part in prefix.split("/") if prefix):
        raise ValueError(f"--s3-allow {entry}: expected BUCKET or BUCKET/PREFIX")
    return text


def _refuse(uri: str, detail: str, message: str) -> None:
    """Logs why `uri` is refused (with server paths) and raises the path-free message."""
    log.warning("adapter source %s refused: %s", uri, detail)
    raise AdapterInvalid([message])
