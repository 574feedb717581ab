"""Resolves an adapter source URI to a local directory: a path, file:///path or s3://bucket/prefix.

S3 needs the optional `s3` extra (boto3), imported only when an s3:// URI is resolved. An
S3 adapter is mirrored into `cache_dir/s3/<bucket>/<prefix>/<etag digest>/`: a changed
object gets a new directory, an unchanged one is not downloaded again, and a download is
renamed into place only once complete, so a reader never sees half a mirror.

Callers learn only "not found or not readable" (or "try again later"), never whether a
server path exists or what S3 said; the detail goes to this worker's log. A SourcePolicy
(confinement.py) limits the roots, buckets and size a worker accepts, checked before
anything is read or downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import urllib.parse

from lorafleet.dataplane.adapters.confinement import UNCONFINED, SourcePolicy
from lorafleet.dataplane.adapters.errors import (
    AdapterInvalid,
    AdapterNotFound,
    AdapterSourceUnavailable,
    echo,
)
from lorafleet.runtime.names import SOURCE_SCHEMES

# The files of a PEFT adapter directory the loader reads (the .bin only to name the refusal).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
_S3_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
NOT_READABLE = "adapter source not found or not readable"
TRY_LATER = "adapter source could not be read right now; try again later"
log = logging.getLogger(__name__)


def default_cache_dir() -> pathlib.Path:
    """Where S3 adapters are mirrored unless told otherwise."""
    return (
        pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
        / "lorafleet"
        / "adapters"
    )


class SourceResolver:
    """Turns source URIs into local adapter directories.

    `s3_client` is any object with boto3's `list_objects_v2(Bucket=, Prefix=, Delimiter=)`
    and `download_file(Bucket, Key, Filename)`; by default one is made with boto3 on first use.
    `policy` says which sources may be read (default: any, up to the size limit).
    """

    def __init__(self, cache_dir: pathlib.Path | None = None, *, s3_client=None,
                 policy: SourcePolicy = UNCONFINED) -> None:
        self._cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
        self._s3_client = s3_client
        self.policy = policy

    def resolve(self, uri: str) -> pathlib.Path:
        """The local directory holding the adapter `uri` names."""
        try:
            parsed = urllib.parse.urlparse(uri)
        except ValueError as exc:  # e.g. an unclosed "[" in the host
            raise AdapterInvalid([f"source {echo(uri)} is not a valid URI"]) from exc
        if parsed.scheme not in SOURCE_SCHEMES:  # the one list the control plane checks too
            raise AdapterInvalid([f"source {echo(uri)} has unsupported scheme "
                                  f"{echo(parsed.scheme)}; use a local path, file:///path or "
                                  "s3://bucket/prefix"])
        if parsed.scheme == "":
            return self._local(pathlib.Path(uri), uri)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise AdapterInvalid(
                    [f"file URI {echo(uri)} names host {echo(parsed.netloc)}; use file:///path"]
                )
            return self._local(pathlib.Path(urllib.parse.unquote(parsed.path)), uri)
        return self._resolve_s3(parsed.netloc, parsed.path.strip("/"), uri)

    def _local(self, path: pathlib.Path, uri: str) -> pathlib.Path:
        """The real directory, once the policy allows it and its files' sizes."""
        directory = _local_dir(self.policy.local_dir(path, uri), uri)
        self.policy.check_files(directory, ADAPTER_FILES, uri)
        return directory

    def _resolve_s3(self, bucket: str, prefix: str, uri: str) -> pathlib.Path:
        if not bucket or not prefix:
            raise AdapterInvalid(
                [f"S3 source {echo(uri)} must name a bucket and a prefix: s3://bucket/prefix"]
            )
        # Bucket and prefix become cache directories: no segment may climb out of the cache.
        if any(part in ("", ".", "..") for part in [bucket, *prefix.split("/")]):
            raise AdapterInvalid([f"S3 source {echo(uri)} has an empty, '.' or '..' path segment"])
        self.policy.check_s3(bucket, prefix, uri)
        client = self._client()
        objects = _list_adapter_objects(client, bucket, prefix, uri)
        self.policy.check_size({name: size for name, (_, size) in objects.items()}, uri)
        etags = "\n".join(f"{name}={etag}" for name, (etag, _) in sorted(objects.items()))
        target = (
            self._cache_dir
            / "s3"
            / bucket
            / prefix
            / hashlib.sha256(etags.encode()).hexdigest()[:16]
        )
        if target.is_dir():
            return target
        try:
            _mirror(client, bucket, prefix, objects, target, uri)
        except OSError as exc:  # this worker's disk, not the caller's doing
            log.warning("mirroring adapter source %s into %s failed: %s", uri, target, exc)
            raise AdapterSourceUnavailable(TRY_LATER) from exc
        return target

    def _client(self):
        if self._s3_client is None:
            try:
                import boto3
            except ImportError as exc:
                raise AdapterSourceUnavailable(
                    "s3:// adapter sources need boto3: install the 's3' extra "
                    "(pip install 'lorafleet[s3]')"
                ) from exc
            self._s3_client = boto3.client("s3")
        return self._s3_client


def _mirror(client, bucket: str, prefix: str, objects, target: pathlib.Path, uri: str) -> None:
    """Downloads `objects` into a staging directory, then renames it to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        for name in objects:
            _s3_call(uri, client.download_file, bucket, f"{prefix}/{name}", str(staging / name))
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # a concurrent download that won the rename is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _not_readable(uri: str, detail: object) -> AdapterNotFound:
    """The caller's error for a source that is missing or unusable; the detail is logged.

    A missing path, a file, and an unreadable directory all read the same to the caller,
    so refusals cannot be used to probe the worker's filesystem.
    """
    log.warning("adapter source %s is not usable: %s", uri, detail)
    return AdapterNotFound(NOT_READABLE)


def _local_dir(path: pathlib.Path, uri: str) -> pathlib.Path:
    try:
        is_dir = path.is_dir()
    except (OSError, ValueError) as exc:  # permission, name too long, a NUL byte
        raise _not_readable(uri, exc) from exc
    if not is_dir:
        raise _not_readable(uri, "no such directory (missing, or not a directory)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise _not_readable(uri, "the worker may not list or read the directory")
    return path


def _list_adapter_objects(client, bucket: str, prefix: str,
                          uri: str) -> dict[str, tuple[str, int]]:
    """{file name: (ETag, size in bytes)} of the adapter files directly under the prefix."""
    found: dict[str, tuple[str, int]] = {}
    token = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": f"{prefix}/", "Delimiter": "/"}
        if token:
            kwargs["ContinuationToken"] = token
        page = _s3_call(uri, client.list_objects_v2, **kwargs)
        for obj in page.get("Contents", []):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name in ADAPTER_FILES:
                found[name] = (str(obj.get("ETag", "")), int(obj.get("Size", 0)))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    if not found:
        raise _not_readable(uri, "no adapter files directly under the prefix")
    return found


def _s3_call(uri: str, method, *args, **kwargs):
    """Calls the S3 client, translating its failures into adapter errors."""
    try:
        return method(*args, **kwargs)
    except Exception as exc:  # botocore's errors are not importable without the extra
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in _S3_MISSING_CODES:
            raise _not_readable(uri, f"S3 {code}: {exc}") from exc
        log.warning("reading adapter source %s failed: %s", uri, exc)
        raise AdapterSourceUnavailable(TRY_LATER) from exc
